"""Annotations: validating and storing regions in bulk, and every format's export and import.

regions_validated_per_s        regions validated against the schema and stored, end to end through
                               the API: bulk predictions (1,000 per call, 10 regions each) posted
                               with the Django test client, JSON parsing and the database included
regions_validated_per_s_pure   the same regions through labeling.regions.validate_regions alone
regions_goal_ratio             regions_validated_per_s / 20,000 (the goal)
format_<name>_export_s         seconds to export the annotated items in the format (read from
                               PostgreSQL with a server-side cursor, written to a temporary file)
format_<name>_import_s         seconds to read that file back: parse, match every record to its
                               item and validate every region against the schema

Scales: small = 10k regions and 1,000 annotated items; full = 100k regions and 10,000 items (the
issue's sizes). CoNLL (text items) and CVAT (import only) are left out: the first needs text
content in the object store, the second has no exporter to produce its input.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import Figure
from bench.ingest import _database_env

SCALES = {"small": (10_000, 1_000), "full": (100_000, 10_000)}
FORMATS = ("coco", "yolo", "voc", "labelstudio", "jsonl", "csv")
PER_CALL = 1_000
REGIONS_PER_PREDICTION = 10

SPEC = {
    "settings": {"classification": "single", "out_of_bounds": "reject"},
    "classes": [
        {
            "name": "car",
            "color": "#ff0000",
            "tools": ["bbox", "polygon"],
            "attributes": [
                {"name": "occluded", "type": "bool", "default": False},
                {"name": "make", "type": "enum", "options": ["audi", "bmw", "other"], "default": "other"},
            ],
        },
        {"name": "person", "color": "#00ff00", "tools": ["bbox", "polygon"]},
        {"name": "day", "color": "#ffff00", "tools": ["classification"]},
        {"name": "night", "color": "#000088", "tools": ["classification"]},
    ],
}


def _regions(rng: random.Random, count: int, *, score: bool) -> list[dict[str, Any]]:
    """A realistic mix: boxes mostly, some polygons, one classification."""
    regions: list[dict[str, Any]] = [
        {"id": "c", "type": "classification", "label": rng.choice(["day", "night"]), "geometry": {}}
    ]
    for n in range(count - 1):
        x, y = rng.uniform(0, 500), rng.uniform(0, 380)
        w, h = rng.uniform(5, 130), rng.uniform(5, 95)
        label = rng.choice(["car", "person"])
        attributes = {"occluded": rng.random() < 0.3} if label == "car" else {}
        region: dict[str, Any]
        if n % 4 == 3:
            geometry: dict[str, Any] = {"points": [[x, y], [x + w, y], [x + w, y + h], [x, y + h * 0.8]]}
            region = {
                "id": f"r{n}",
                "type": "polygon",
                "label": label,
                "attributes": attributes,
                "geometry": geometry,
            }
        else:
            geometry = {"x": x, "y": y, "width": w, "height": h}
            region = {
                "id": f"r{n}",
                "type": "bbox",
                "label": label,
                "attributes": attributes,
                "geometry": geometry,
            }
        if score:
            region["score"] = round(rng.random(), 4)
        regions.append(region)
    return regions


def run(scale: str) -> list[Figure]:
    regions_total, annotated = SCALES[scale]
    home = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    env, stop_services = _database_env(home)
    try:
        env.update(
            {
                "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only"),
                "LOUPE_HOME": str(home),
                "LOUPE_STORAGE": "local",
                "LOUPE_OBJECTS_DIR": str(home / "objects"),
                "DJANGO_SETTINGS_MODULE": "config.settings",
            }
        )
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        return _measure(regions_total, annotated, home)
    finally:
        if stop_services is not None:
            stop_services()


def _measure(regions_total: int, annotated: int, home: Path) -> list[Figure]:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from labeling import regions as rg
    from labeling.models import Annotation, Task
    from labeling.services import tasks_ensure
    from projects import services as project_services
    from projects.access import org_access
    from storage.models import Blob, Dataset, Item

    user = User.objects.create_user(username="bench")
    org = project_services.organization_create(actor=user, name="Bench", slug="bench")
    project = project_services.project_create(
        actor=user, access=org_access(user=user, organization_id=org.pk), name="Bench"
    )
    _, token = project_services.api_token_create(user=user, name="bench")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")
    assert (
        client.post(f"/api/v1/projects/{project.pk}/schemas", {"spec": SPEC}, format="json").status_code
        == 201
    )

    dataset = Dataset.objects.create(organization=org, name="frames")
    dataset.projects.add(project)
    blob = Blob.objects.create(
        sha256="0" * 64, size=1, media_type="image/jpeg", key="blobs/00/00/" + "0" * 64
    )
    Item.objects.bulk_create(
        (
            Item(
                dataset=dataset,
                name=f"frames/{i:06d}.jpg",
                modality="image",
                media_type="image/jpeg",
                meta={"width": 640, "height": 480},
                primary=blob,
            )
            for i in range(annotated)
        ),
        batch_size=5000,
    )
    tasks_ensure(project.pk)
    task_ids = list(Task.objects.filter(project=project).order_by("id").values_list("id", flat=True))

    rng = random.Random(7)  # noqa: S311  (synthetic data)
    predictions = regions_total // REGIONS_PER_PREDICTION
    bodies: list[dict[str, Any]] = [
        {
            "model_version": "bench",
            "predictions": [
                {
                    "task": task_ids[(call * PER_CALL + i) % len(task_ids)],
                    "result": _regions(rng, REGIONS_PER_PREDICTION, score=True),
                }
                for i in range(PER_CALL)
            ],
        }
        for call in range(predictions // PER_CALL)
    ]
    # Bodies are encoded beforehand: a pipeline encodes on its own machine, the figure is Loupe's.
    encoded = [json.dumps(body) for body in bodies]
    started = time.perf_counter()
    for payload in encoded:
        response = client.generic(
            "POST", f"/api/v1/projects/{project.pk}/predictions", payload, content_type="application/json"
        )
        if response.status_code != 201:
            raise RuntimeError(
                f"bulk predictions answered {response.status_code}: {response.content[:500]!r}"
            )
    api_rate = regions_total / (time.perf_counter() - started)

    from labeling.services import parsed_schema, schema_current

    schema = schema_current(project.pk)
    assert schema is not None
    parsed = parsed_schema(schema)
    facts = rg.ItemFacts(modality="image", width=640, height=480)
    results = [p["result"] for body in bodies for p in body["predictions"]]
    started = time.perf_counter()
    for result in results:
        rg.validate_regions(result, parsed, facts, prediction=True)
    pure_rate = regions_total / (time.perf_counter() - started)

    Annotation.objects.bulk_create(
        (
            Annotation(
                task_id=task_id,
                author=user,
                schema_version=schema.version,
                state="submitted",
                result=_regions(rng, 6, score=False),
            )
            for task_id in task_ids
        ),
        batch_size=2000,
    )
    figures = [
        Figure("regions_validated_per_s", api_rate, "regions/s"),
        Figure("regions_validated_per_s_pure", pure_rate, "regions/s"),
        Figure("regions_goal_ratio", api_rate / 20_000, "x"),
    ]
    figures += _formats(project.pk, parsed, home)
    return figures


def _formats(project_id: int, parsed: Any, home: Path) -> list[Figure]:
    from labeling.formats import get_format
    from labeling.formats.base import ItemIndex
    from labeling.jobs import export_items, label_classes, parse_and_validate, project_items

    classes = label_classes(parsed)
    index = ItemIndex(project_items(project_id))
    figures: list[Figure] = []
    for name in FORMATS:
        module = get_format(name)
        path = home / f"export{module.extension}"
        started = time.perf_counter()
        with path.open("wb") as out:
            module.export(export_items(project_id, "annotations", "", with_text=False), classes, out)
        figures.append(Figure(f"format_{name}_export_s", time.perf_counter() - started, "s"))
        started = time.perf_counter()
        records, errors = parse_and_validate(name, path, parsed, index, prediction=False)
        figures.append(Figure(f"format_{name}_import_s", time.perf_counter() - started, "s"))
        if errors or not records:
            raise RuntimeError(f"{name}: the export did not import back cleanly: {errors[:3]}")
    return figures
