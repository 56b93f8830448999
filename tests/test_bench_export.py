"""The export benchmark (`python -m bench export`): its generated labels, the checks that stop a
wrong export from counting, and the whole scenario at its small scale."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import export as bench
from bench.isolated import no_job_messages
from config.env import parse_database_url
from labeling.regions import ItemFacts, parse_schema, validate_regions
from labeling.releases.exports import write_export
from storage.objects import object_store
from tests.labeling.conftest import objects_dir  # noqa: F401  (the local object store fixture)

REPO = Path(__file__).resolve().parent.parent


def test_generated_labels_are_3_to_7_valid_boxes_inside_the_image() -> None:
    rng = random.Random(1)
    schema = parse_schema(bench.SPEC)
    counts = []
    for width, height in bench.IMAGE_SIZES * 30:
        regions = bench.boxes(rng, width, height)
        counts.append(len(regions))
        facts = ItemFacts.from_item("image", {"width": width, "height": height})
        assert validate_regions(regions, schema, facts) == regions  # as a submit stores them
    assert min(counts) == 3 and max(counts) == 7
    assert 4.5 < sum(counts) / len(counts) < 5.5


def test_figure_names_say_the_release_size() -> None:
    assert bench.size_label(100_000) == "100k"
    assert bench.size_label(10_000) == "10k"
    assert bench.size_label(1_500) == "1.5k"
    assert bench._ratio(9.99, 10.0) == 0.99  # a missed goal never prints as met


def _rewrite(key: str, change: Any) -> str:
    """A copy of an exported object with `change` applied to its text; returns the new key."""
    store = object_store()
    with store.open(key) as source:
        text = source.read().decode()
    store.put_bytes(key + ".changed", change(text).encode(), content_type="application/octet-stream")
    return key + ".changed"


@pytest.mark.django_db
def test_the_checks_accept_a_true_export_and_refuse_a_wrong_one(objects_dir: Any) -> None:  # noqa: F811
    with no_job_messages():
        owner, org, annotators = bench._world()
        project_id = bench._labelled_project(owner, org, annotators, "Checked", 40)
        release, _ = bench._release(owner, project_id)
    regions = release.counts["regions"]
    assert release.counts["items"] == 40 and 3 * 40 <= regions <= 7 * 40
    coco = write_export(release, "coco", include_media=False, job_id=1)["key"]
    jsonl = write_export(release, "jsonl", include_media=False, job_id=2)["key"]
    assert bench._check(release, "coco", coco) == (40, regions)
    assert bench._check(release, "jsonl", jsonl) == (40, regions)

    def first_box_moved(text: str) -> str:
        document = json.loads(text)
        document["annotations"][0]["bbox"][0] += 1
        return json.dumps(document)

    def last_box_dropped(text: str) -> str:
        document = json.loads(text)
        document["annotations"].pop()
        return json.dumps(document)

    def last_line_dropped(text: str) -> str:
        return "".join(text.splitlines(keepends=True)[:-1])

    for key, format, change in (
        (coco, "coco", first_box_moved),
        (coco, "coco", last_box_dropped),
        (jsonl, "jsonl", last_line_dropped),
    ):
        with pytest.raises(RuntimeError, match="the export is wrong"):
            bench._check(release, format, _rewrite(key, change))


@pytest.mark.slow
def test_the_scenario_prints_sane_figures_at_its_small_scale(tmp_path: Path) -> None:
    base = os.environ.get("DATABASE_URL")
    name = f"{parse_database_url(base).name}_bench_export_test" if base else "loupe_bench_export_test"
    env = {**os.environ, "LOUPE_BENCH_DB": name[:63], "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "export", "--scale", "small"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    figures = {}
    for line in done.stdout.splitlines():
        figure, value, unit = line.split()
        figures[figure] = (float(value), unit)
    assert "object store: local folder" in done.stderr
    for figure in ("export_coco_1k_s", "export_coco_5k_s", "export_jsonl_1k_s", "export_jsonl_5k_s"):
        assert 0 < figures[figure][0] < 30 and figures[figure][1] == "s", figure
    assert figures["export_coco_5k_goal_ratio"][0] > 0
    baseline = figures["export_child_baseline_rss_mib"][0]
    assert 30 < baseline < 1024  # a Django process with its converters
    for figure in ("export_peak_rss_1k_mib", "export_peak_rss_5k_mib", "export_jsonl_peak_rss_5k_mib"):
        # (each child's baseline differs from the one printed by a fraction of a MiB)
        assert baseline - 5 < figures[figure][0] < baseline + 200, figure
    assert 0 <= figures["export_rss_above_baseline_5k_mib"][0] < 200
    ratio = figures["export_peak_rss_ratio_5k_1k"][0]
    assert 0.9 < ratio < 1.2  # memory must not grow with the release
    assert figures["export_peak_rss_goal_ratio"][0] == pytest.approx(int(100 * 1.2 / ratio) / 100, abs=0.011)
    assert 3 * 5000 <= figures["export_regions_5k"][0] <= 7 * 5000
    assert figures["release_build_5k_s"][0] > 0 and "machine_loop_ms" in figures
