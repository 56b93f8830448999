"""Releases through the API: freezing, manifests, splits, diff, lineage, items.jsonl, permissions."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from PIL import Image

from labeling.models import Annotation, MLModel, ModelVersion, Prediction, Release, ReleaseItem, Task
from labeling.releases import splits as sp
from labeling.releases import urls as release_urls
from labeling.services import region_changes
from projects import jobs
from projects.access import PROJECT_MATRIX, ProjectAction
from projects.models import Job, JobChunk
from tests.conftest import CALLERS, World, assert_error
from tests.labeling.conftest import API, run
from tests.labeling.releases import Shop, another_annotator, box
from tests.storage.conftest import upload

pytestmark = pytest.mark.django_db


def regions_for(name: str) -> list[dict[str, Any]]:
    n = int(name[-8:-4])
    found = [box("b1", "car", 2 + n % 30, 3)]
    if n % 3 == 0:
        found.append(box("b2", "person", 30, 20, 8, 16))
    if n % 4 == 1:
        found.append(box("b3", "bike", 10, 30, 12, 6))
    return found


@pytest.fixture
def shop(world: World, objects_dir: Path) -> Shop:
    """12 image tasks labeled through the queue and reviewed: 10 accepted, 1 fixed, 1 rejected."""
    shop = Shop(world, 12)
    labeled = shop.label_all(regions_for)
    assert len(labeled) == 12
    by_item = {Task.objects.get(id=t).item.name: a for t, a in labeled.items()}
    shop.annotations = by_item  # type: ignore[attr-defined]
    for name, annotation_id in sorted(by_item.items()):
        if name.endswith("0010.png"):
            shop.review(annotation_id, "fix", result=[box("b1", "car", 1, 1, 30, 30)])
        elif name.endswith("0011.png"):
            shop.review(annotation_id, "reject", comment="Missed the truck.")
        else:
            shop.review(annotation_id, "accept")
    return shop


def _get(world: World, url: str, who: str = "manager") -> Any:
    return world.client(who).get(url)


def _fetch(world: World, url: str) -> bytes:
    """Download a storage link (the local store's signed link, served by Loupe)."""
    response = world.client("manager").get(url)
    assert response.status_code == 200, url
    return b"".join(response.streaming_content) if response.streaming else response.content


def _manifest(world: World, release_id: int) -> tuple[bytes, dict[str, Any]]:
    link = _get(world, f"{API}/releases/{release_id}/manifest")
    assert link.status_code == 200, link.content
    return _fetch(world, link.json()["url"]), link.json()


def _items(world: World, release_id: int, who: str = "manager", query: str = "") -> list[dict[str, Any]]:
    response = _get(world, f"{API}/releases/{release_id}/items.jsonl{query}", who)
    assert response.status_code == 200, getattr(response, "content", b"")
    assert response["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]


def test_a_release_freezes_the_reviewed_labels_with_a_checksummed_manifest(shop: Shop) -> None:
    world = shop.world
    release = shop.cut(name="first", notes="all reviewed work")
    assert release["version"] == 1 and release["state"] == "ready" and release["parent"] is None
    counts = release["counts"]
    assert counts["items"] == 11  # the rejected task is in rework, not released
    assert counts["by_source"] == {"accepted": 11}
    expected = Counter(r["label"] for n in range(10) for r in regions_for(f"frames/{n:04d}.png"))
    expected["car"] += 1  # the fixed task: one car box
    assert counts["by_class"] == dict(expected) and counts["regions"] == sum(expected.values())
    assert sum(counts["by_split"].values()) == 11

    data, link = _manifest(world, release["id"])
    assert hashlib.sha256(data).hexdigest() == release["manifest"]["sha256"] == link["sha256"]
    assert len(data) == release["manifest"]["size"]
    lines = [json.loads(line) for line in data.splitlines()]
    header, entries, footer = lines[0], lines[1:-1], lines[-1]
    assert (
        header["version"] == 1
        and header["schema"]["version"] == 1
        and header["filter"]["states"]
        == [
            "accepted",
            "done",
        ]
    )
    assert footer == {"counts": counts}
    assert [e["item"] for e in entries] == sorted(e["item"] for e in entries)
    fixed = next(e for e in entries if e["name"].endswith("0010.png"))
    annotation = Annotation.objects.get(id=fixed["annotation"])
    assert fixed["annotation_version"] == annotation.version == 2  # the reviewer's fix is the revision frozen
    assert fixed["regions"] == [box("b1", "car", 1, 1, 30, 30)]
    item = shop.items[0]
    first = next(e for e in entries if e["item"] == item.pk)
    assert first["sha256"] == item.primary.sha256 and first["key"] == item.primary.key

    # Edits after the release change nothing in it: the manifest and the items read the same.
    items_before = [{k: v for k, v in i.items() if k != "url"} for i in _items(world, release["id"])]
    Annotation.objects.filter(id=first["annotation"]).update(result=[box("zz", "bike", 1, 1)], version=9)
    again, _ = _manifest(world, release["id"])
    assert again == data
    assert [{k: v for k, v in i.items() if k != "url"} for i in _items(world, release["id"])] == items_before


def test_the_filter_takes_classes_metadata_and_states(shop: Shop) -> None:
    front = shop.cut(
        filter={"metadata": {"camera": "front"}, "classes": ["person"], "only_with_classes": True}
    )
    entries = list(ReleaseItem.objects.filter(release_id=front["id"]).values_list("name", "regions"))
    # Even frames are front-camera; of those accepted, 0, 6 carry a person (n % 3 == 0).
    assert sorted(name for name, _ in entries) == ["frames/0000.png", "frames/0006.png"]
    assert all(r["label"] == "person" for _, regions in entries for r in regions)
    assert front["counts"]["left_out"] == {"no_labels": 0, "no_classes": 4}
    in_rework = shop.cut(filter={"states": ["rejected"]})
    assert in_rework["counts"]["items"] == 0 and in_rework["counts"]["left_out"]["no_labels"] == 1


def test_items_jsonl_streams_records_with_working_media_links(shop: Shop) -> None:
    world = shop.world
    release = shop.cut()
    records = _items(world, release["id"], "ml_engineer")
    assert len(records) == 11
    record = records[0]
    assert set(record) >= {"item", "name", "sha256", "size", "split", "source", "regions", "url", "meta"}
    assert hashlib.sha256(_fetch(world, record["url"])).hexdigest() == record["sha256"]
    split = record["split"]
    only = _items(world, release["id"], query=f"?split={split}")
    assert {r["split"] for r in only} == {split} and len(only) == release["counts"]["by_split"][split]


def test_splits_stay_put_from_one_release_to_the_next(shop: Shop) -> None:
    world = shop.world
    first = shop.cut(splits={"ratios": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": "s1"})
    # More items arrive and are labeled; the old ones keep their split.
    shop.add_items(12, 40)
    world.client("manager").patch(shop.url("/workflow"), {"review": "none"}, format="json")
    shop.label_all(regions_for)
    second = shop.cut(splits={"ratios": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": "s1"})
    assert second["parent"] == first["id"] and second["counts"]["items"] == 40  # the rework done too
    before = dict(ReleaseItem.objects.filter(release_id=first["id"]).values_list("item_id", "split"))
    after = dict(ReleaseItem.objects.filter(release_id=second["id"]).values_list("item_id", "split"))
    assert all(after[item] == split for item, split in before.items())
    # A different seed shuffles; the same seed in another project would give the same splits.
    third = shop.cut(splits={"ratios": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": "other"})
    moved = dict(ReleaseItem.objects.filter(release_id=third["id"]).values_list("item_id", "split"))
    assert moved != after


def test_stratified_splits_keep_each_class_in_proportion(shop: Shop) -> None:
    world = shop.world
    shop.add_items(12, 72)
    world.client("manager").patch(shop.url("/workflow"), {"review": "none"}, format="json")
    shop.label_all(regions_for)
    release = shop.cut(splits={"ratios": {"train": 0.6, "val": 0.2, "test": 0.2}, "stratify": True})
    entries = ReleaseItem.objects.filter(release_id=release["id"])
    by_stratum: dict[str, Counter[str]] = {}
    for stratum, split in entries.values_list("stratum", "split"):
        by_stratum.setdefault(stratum, Counter())[split] += 1
    for stratum, counts in by_stratum.items():
        total = sum(counts.values())
        for split, ratio in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(counts[split] - ratio * total) <= 1, (stratum, counts)


def test_the_diff_of_two_releases_names_every_change(shop: Shop, world: World) -> None:
    first = shop.cut()
    names = {i.name: i for i in shop.items}
    # Changed: a reviewer corrects an accepted task's labels (a new revision, accepted again).
    changed_item = names["frames/0003.png"]
    annotation = Annotation.objects.get(id=shop.annotations["frames/0003.png"])  # type: ignore[attr-defined]
    Annotation.objects.filter(id=annotation.pk).update(
        result=[box("b1", "car", 9, 9), box("b4", "bike", 1, 2)], version=annotation.version + 1
    )
    # Removed: a task sent back to rework. Added: the rejected task, redone and accepted.
    removed_item = names["frames/0005.png"]
    Task.objects.filter(item=removed_item).update(state="rejected")
    redone = names["frames/0011.png"]
    Annotation.objects.filter(id=shop.annotations["frames/0011.png"]).update(  # type: ignore[attr-defined]
        state="submitted", review_status="accepted"
    )
    Task.objects.filter(item=redone).update(state="accepted")
    second = shop.cut()
    assert second["parent"] == first["id"]
    response = world.client("ml_engineer").get(f"{API}/releases/{second['id']}/diff")
    assert response.status_code == 200
    diff = json.loads(b"".join(response.streaming_content))
    assert diff["from"] == {"id": first["id"], "version": 1} and diff["to"]["version"] == 2
    assert [a["item"] for a in diff["added"]] == [redone.pk]
    assert [r["item"] for r in diff["removed"]] == [removed_item.pk]
    assert diff["changed"] == [
        {
            "item": changed_item.pk,
            "name": "frames/0003.png",
            "source": ["accepted", "accepted"],
            "regions": {"added": ["b4"], "removed": ["b2"], "changed": ["b1"]},
        }
    ]
    assert diff["summary"] == {"added": 1, "removed": 1, "changed": 1}
    # The other way round, against an explicit release.
    back = world.client("manager").get(f"{API}/releases/{first['id']}/diff?against={second['id']}")
    reverse = json.loads(b"".join(back.streaming_content))
    assert [r["item"] for r in reverse["removed"]] == [redone.pk]
    assert [a["item"] for a in reverse["added"]] == [removed_item.pk]
    no_parent = world.client("manager").get(f"{API}/releases/{first['id']}/diff")
    assert_error(no_parent, 400, "invalid")


def test_lineage_names_who_and_what_shaped_an_item(shop: Shop, world: World) -> None:
    release = shop.cut()
    fixed = next(i for i in shop.items if i.name.endswith("0010.png"))
    response = world.client("ml_engineer").get(f"{API}/releases/{release['id']}/items/{fixed.pk}/lineage")
    assert response.status_code == 200, response.content
    lineage = response.json()
    assert lineage["item"]["sha256"] == fixed.primary.sha256
    assert lineage["item"]["dataset"] == {"id": shop.dataset.pk, "name": shop.dataset.name}
    assert lineage["labels"]["source"] == "accepted" and lineage["labels"]["annotation_version"] == 2
    (annotation,) = lineage["annotations"]
    assert annotation["author"]["username"] == "annotator" and annotation["frozen_version"] == 2
    assert [r["verdict"] for r in annotation["reviews"]] == ["fix"]
    assert annotation["reviews"][0]["by"]["username"] == "reviewer"
    assert [(r["version"], r["by"]["username"]) for r in annotation["revisions"]][-1] == (2, "reviewer")
    assert lineage["quality"]["rules_checked"] == [] and lineage["quality"]["findings"] == []
    missing = world.client("manager").get(f"{API}/releases/{release['id']}/items/999999/lineage")
    assert_error(missing, 404)


def test_bad_release_requests_write_nothing(shop: Shop, world: World) -> None:
    bad = shop.release(filter={"classes": ["car", "unicorn"], "datasets": [999999]})
    body = assert_error(bad, 422, "release_invalid")
    paths = {e["path"] for e in body["details"]["errors"]}
    assert paths == {"filter.classes[1]", "filter.datasets[0]"}
    assert_error(shop.release(splits={"ratios": {"train": 0.7, "test": 0.2}}), 422, "release_invalid")
    assert_error(shop.release(filter={"states": ["sleeping"]}), 400)
    assert_error(shop.release(parent=7), 404)
    assert not Release.objects.exists() and not Job.objects.filter(kind="labeling.release_build").exists()


def test_who_may_see_and_cut_releases(shop: Shop, world: World) -> None:
    release = shop.cut()
    for who in ("manager", "reviewer", "ml_engineer", "owner"):
        listed = world.client(who).get(shop.url("/releases"))
        assert listed.status_code == 200 and [r["id"] for r in listed.json()["results"]] == [release["id"]]
    assert_error(world.client("annotator").get(shop.url("/releases")), 403)
    assert_error(world.client("annotator").get(f"{API}/releases/{release['id']}/items.jsonl"), 403)
    assert_error(world.client("outsider").get(f"{API}/releases/{release['id']}"), 404)
    assert_error(world.client("member").get(f"{API}/releases/{release['id']}"), 404)
    assert_error(shop.release("ml_engineer"), 403)
    assert_error(shop.release("reviewer"), 403)


def test_a_release_still_building_answers_409(shop: Shop, world: World) -> None:
    created = shop.release()
    assert created.status_code == 202 and created.json()["state"] == "building"
    release_id = created.json()["id"]
    assert_error(
        world.client("manager").get(f"{API}/releases/{release_id}/items.jsonl"), 409, "release_not_ready"
    )
    exported = world.client("manager").post(
        f"{API}/releases/{release_id}/exports", {"format": "coco"}, format="json"
    )
    assert_error(exported, 409, "release_not_ready")


def test_a_build_interrupted_between_chunks_resumes_without_doubles(
    shop: Shop, world: World, settings: Any
) -> None:
    shop.add_items(12, 30)
    world.client("manager").patch(shop.url("/workflow"), {"review": "none"}, format="json")
    shop.label_all(regions_for)
    from labeling.releases import build

    settings_chunk, build.CHUNK_TASKS = build.CHUNK_TASKS, 5
    try:
        created = shop.release()
        job_id = Release.objects.get(id=created.json()["id"]).job_id
        assert job_id is not None

        class Killed(BaseException):
            """Like SIGKILL: no handler of the job engine runs."""

        def die_after_two(job: Job, index: int) -> None:
            if index == 1:
                raise Killed

        with pytest.raises(Killed):
            jobs.job_execute(job_id=job_id, on_chunk=die_after_two)
        # The worker is gone: once its heartbeat is stale, another takes over the missing chunks.
        Job.objects.filter(id=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        redone: list[int] = []
        assert jobs.job_execute(job_id=job_id, on_chunk=lambda _, i: redone.append(i)) == "succeeded"
        assert redone[0] == 2
    finally:
        build.CHUNK_TASKS = settings_chunk
    release = Release.objects.get(id=created.json()["id"])
    entries = ReleaseItem.objects.filter(release=release)
    assert entries.count() == release.counts["items"] == 30
    assert entries.values("item_id").distinct().count() == 30


# --- Pure functions ------------------------------------------------------------------------------


def test_hash_splits_are_stable_and_follow_the_ratios() -> None:
    ratios = sp.normalize_ratios({"test": 0.1, "train": 0.8, "val": 0.1})
    assert [name for name, _ in ratios] == ["train", "val", "test"]
    keys = [sp.split_key(hashlib.sha256(str(n).encode()).hexdigest(), "seed") for n in range(20_000)]
    counts = Counter(sp.by_hash(k, ratios) for k in keys)
    assert abs(counts["train"] / 20_000 - 0.8) < 0.01 and abs(counts["test"] / 20_000 - 0.1) < 0.01
    assert sp.split_key("ab" * 32, "seed") == sp.split_key("ab" * 32, "seed") != sp.split_key("ab" * 32, "x")


def test_stratified_splits_fill_the_largest_deficit_and_respect_what_is_placed() -> None:
    ratios = [("train", 0.5), ("test", 0.5)]
    new = [(i, "cat" if i < 10 else "dog", i / 100) for i in range(14)]
    chosen = sp.stratified(new, ratios)
    assert Counter(chosen[i] for i in range(10)) == {"train": 5, "test": 5}
    assert Counter(chosen[i] for i in range(10, 14)) == {"train": 2, "test": 2}
    # With 4 cats already in train, the next 4 cats all go to test.
    more = sp.stratified([(i, "cat", i / 10) for i in range(4)], ratios, {"cat": {"train": 4}})
    assert set(more.values()) == {"test"}
    assert sp.stratum_of([box("a", "bike", 0, 0), box("b", "car", 0, 0)], ["car", "person", "bike"]) == "car"
    assert sp.stratum_of([], ["car"]) == ""


def test_region_changes_by_id() -> None:
    before = [box("a", "car", 0, 0), box("b", "car", 5, 5)]
    after = [box("a", "car", 0, 0), box("b", "car", 6, 5), box("c", "bike", 1, 1)]
    assert region_changes(before, after) == {"added": ["c"], "removed": [], "changed": ["b"]}


def test_tasks_labeled_twice_release_their_consensus(world: World, objects_dir: Path) -> None:
    shop = Shop(world, 3, review="none")
    assert (
        world.client("manager").patch(shop.url("/workflow"), {"overlap": 2}, format="json").status_code == 200
    )
    _, second = another_annotator(world)
    shop.label_all(lambda name: [box("b1", "car", 10, 10, 20, 10)])
    shop.label_all(lambda name: [box("x9", "car", 12, 10, 20, 10)], client=second)
    assert set(Task.objects.filter(project=world.project).values_list("state", flat=True)) == {"done"}
    release = shop.cut()
    assert release["counts"]["by_source"] == {"consensus": 3}
    entry = ReleaseItem.objects.filter(release_id=release["id"]).first()
    assert entry is not None and entry.annotation_id is None and len(entry.annotations) == 2
    (fused,) = entry.regions
    assert fused["label"] == "car" and fused["geometry"]["x"] == pytest.approx(11, abs=0.01)
    lineage = (
        world.client("manager").get(f"{API}/releases/{release['id']}/items/{entry.item_id}/lineage").json()
    )
    assert lineage["labels"]["source"] == "consensus"
    assert sorted(a["author"]["username"] for a in lineage["annotations"]) == ["annotator", "annotator2"]
    assert lineage["quality"]["agreement"]["annotators"] == 2


def test_every_release_endpoint_answers_every_caller_as_the_matrix_says(
    world: World, objects_dir: Path
) -> None:
    shop = Shop(world, 2, review="none")
    shop.label_all(regions_for)
    release = shop.cut()
    item = shop.items[0].pk
    export_id = (
        world.client("manager")
        .post(f"{API}/releases/{release['id']}/exports", {"format": "jsonl"}, format="json")
        .json()["id"]
    )
    r, p = f"{API}/releases/{release['id']}", shop.url("/releases")
    view, export, create = (
        ProjectAction.RELEASES_VIEW,
        ProjectAction.RELEASES_EXPORT,
        ProjectAction.RELEASES_CREATE,
    )
    cases = [  # (method, route name, path, body, actions needed, success statuses)
        ("get", "release-list", p, None, [view], {200}),
        ("get", "release-detail", r, None, [view], {200}),
        ("get", "release-manifest", f"{r}/manifest", None, [view], {200}),
        ("get", "release-items", f"{r}/items.jsonl", None, [view], {200}),
        ("get", "release-diff", f"{r}/diff?against={release['id']}", None, [view], {200}),
        ("get", "release-lineage", f"{r}/items/{item}/lineage", None, [view], {200}),
        ("get", "release-export-list", f"{r}/exports", None, [view], {200}),
        ("get", "release-export-detail", f"{r}/exports/{export_id}", None, [view], {200}),
        ("post", "release-export-list", f"{r}/exports", {"format": "coco"}, [view, export], {200, 202}),
        ("post", "release-list", p, {"name": "again"}, [create], {202}),
    ]
    covered = {(method, name) for method, name, *_ in cases}
    routes = {(m, u.name) for u in release_urls.urlpatterns for m in ("get", "post") if m in _methods(u)}
    assert routes == covered
    for method, _, path, body, actions, success in cases:
        for who, role in CALLERS.items():
            response = getattr(world.client(who), method)(path, body, format="json")
            if role is None:
                expected = {404}
            elif all(role in PROJECT_MATRIX[action] for action in actions):
                expected = success
            else:
                expected = {403}
            assert response.status_code in expected, (method, path, who, response.status_code)


def _methods(pattern: Any) -> set[str]:
    view = pattern.callback.view_class
    return {m for m in ("get", "post") if hasattr(view, m)}


def test_lineage_shows_the_model_that_prelabeled_and_what_was_kept(world: World, objects_dir: Path) -> None:
    shop = Shop(world, 1, review="none")
    model = MLModel.objects.create(organization=world.org, name="detector")
    version = ModelVersion.objects.create(
        model=model, version="v3", kind="http", endpoint="http://127.0.0.1:9", task_type="detection",
        modalities=["image"], outputs=["bbox"], labels=["car", "person"],
    )  # fmt: skip
    task = shop.task_of(shop.items[0])
    predicted = [box("p1", "car", 10, 10), box("p2", "person", 30, 20, 8, 16)]
    prediction = Prediction.objects.create(
        task=task, source=version, model_version="detector:v3", schema_version=1, result=predicted, score=0.8
    )
    client = world.client("annotator")
    handed = client.post(shop.url("/next")).json()
    kept_one = [box("p1", "car", 10, 10)]  # kept the car as predicted, deleted the person
    submitted = client.post(
        shop.url(f"/assignments/{handed['assignment']['id']}/submit"),
        {"lease_id": handed["assignment"]["lease_id"], "result": kept_one, "from_prediction": prediction.pk},
        format="json",
    )
    assert submitted.status_code == 201, submitted.content
    release = shop.cut()
    lineage = (
        world.client("ml_engineer").get(f"{API}/releases/{release['id']}/items/{task.item_id}/lineage").json()
    )
    (annotation,) = lineage["annotations"]
    prelabel = annotation["prelabel"]
    assert (prelabel["model"], prelabel["model_version"], prelabel["registered_version"]) == (
        "detector",
        "detector:v3",
        version.pk,
    )
    assert prelabel["outcome"]["kept"] == 1 and prelabel["outcome"]["deleted"] == 1
    assert prelabel["outcome"]["predicted"] == 2


def test_lineage_traces_an_uploaded_item_to_its_ingest(world: World, objects_dir: Path) -> None:
    shop = Shop(world, 0, review="none")
    picture = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(picture, "PNG")
    sent = upload(world.client("manager"), shop.dataset.pk, {"cams/front/0001.png": picture.getvalue()})
    assert sent.status_code == 202, sent.content
    assert run(sent.json()["id"]).state == "succeeded"
    shop.label_all(lambda name: [box("b1", "car", 5, 5)])
    release = shop.cut()
    (item_id,) = ReleaseItem.objects.filter(release_id=release["id"]).values_list("item_id", flat=True)
    ingest = (
        world.client("manager").get(f"{API}/releases/{release['id']}/items/{item_id}/lineage").json()["item"]
    )
    assert (
        ingest["ingest"]["job"] == sent.json()["id"] and ingest["ingest"]["by"] == world.users["manager"].pk
    )
    assert (
        ingest["ingest"]["name"] == "cams/front/0001.png" and ingest["ingest"]["source"]["kind"] == "staged"
    )
    assert ingest["sha256"] == hashlib.sha256(picture.getvalue()).hexdigest()


def test_a_chunk_held_by_a_dead_worker_is_not_overtaken(shop: Shop, world: World, settings: Any) -> None:
    """The counts and the manifest come last: with chunk 1 leased by a worker that died, the next
    worker waits for the lease to run out instead of counting a release with a hole in it."""
    world.client("manager").patch(shop.url("/workflow"), {"review": "none"}, format="json")
    shop.add_items(12, 30)
    shop.label_all(regions_for)
    from labeling.releases import build

    chunk_tasks, build.CHUNK_TASKS = build.CHUNK_TASKS, 5
    try:
        created = shop.release()
        job_id = Release.objects.get(id=created.json()["id"]).job_id
        assert job_id is not None

        class Killed(BaseException):
            """Like SIGKILL."""

        def die_after_the_first(job: Job, index: int) -> None:
            raise Killed

        with pytest.raises(Killed):
            jobs.job_execute(job_id=job_id, on_chunk=die_after_the_first)
        # The dead worker had leased chunk 1 too (its lease still runs).
        lease = timezone.now() + timedelta(minutes=5)
        JobChunk.objects.create(job_id=job_id, index=1, state="leased", token="dead", lease_until=lease)
        Job.objects.filter(id=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        assert jobs.job_execute(job_id=job_id) == "waiting"
        assert set(JobChunk.objects.filter(job_id=job_id).values_list("index", flat=True)) == {0, 1}
        JobChunk.objects.filter(job_id=job_id, index=1).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )
        Job.objects.filter(id=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        assert jobs.job_execute(job_id=job_id) == "succeeded"
    finally:
        build.CHUNK_TASKS = chunk_tasks
    release = Release.objects.get(id=created.json()["id"])
    assert release.counts["items"] == ReleaseItem.objects.filter(release=release).count() == 30
    data, _ = _manifest(world, release.pk)
    assert len(data.splitlines()) == 30 + 2
