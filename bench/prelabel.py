"""Pre-labeling: built-in models run as jobs, against the same model called in a plain loop.

prelabel_face_items_per_s      images per second through a pre-label job with the OpenCV face
                               model (plan, item reads from the object store, inference, label
                               mapping, validation, writing predictions, chunk records)
prelabel_face_raw_items_per_s  the same images through the model's predictor in a plain loop (same
                               batch size, bytes read from the same store), nothing written; run
                               before and after the job, the faster of the two
prelabel_ner_items_per_s       texts per second through a pre-label job with spaCy NER
prelabel_ner_raw_items_per_s   the same texts through the predictor in a plain loop
prelabel_job_to_raw_ratio      the lower of job / raw for the two models (goal ≥ 0.9: the job
                               costs at most 10 % over the model itself)
prelabel_start_ms              how long POST /projects/{id}/prelabel takes (the web process only
                               plans nothing and enqueues: it never waits for a model)

The job runs in this process the way a worker runs it (projects.jobs.job_execute until done),
with the model already loaded, as in a worker that has run a job before: the figure is the job's
overhead per item, not the one-off model load. Images: 512x512 JPEGs made from scikit-image's
sample photographs; texts: ~300-character English paragraphs with entities. Scales: small = 200
of each, full = 1,000 of each (the issue's size).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import Figure
from bench.ingest import _database_env

SCALES = {"small": 200, "full": 1_000}
BATCH = 32
SPEC = {
    "classes": [
        {"name": "face", "color": "#ff0000", "tools": ["bbox"]},
        {"name": "person", "color": "#00ff00", "tools": ["span"]},
        {"name": "place", "color": "#0000ff", "tools": ["span"]},
        {"name": "organization", "color": "#ffff00", "tools": ["span"]},
        {"name": "date", "color": "#00ffff", "tools": ["span"]},
    ]
}
SENTENCES = [
    "Barack Obama met Angela Merkel in Berlin on {n} March 2016 to discuss trade.",
    "Apple and Microsoft opened offices in Paris, said Tim Cook during a visit in May.",
    "The United Nations sent a team to Nairobi after the floods of {n} April.",
    "Marie Curie worked at the University of Paris and won the Nobel Prize in 1911.",
    "Toyota will build a plant in Kentucky, Governor Andy Beshear announced on Tuesday.",
]


def run(scale: str) -> list[Figure]:
    count = SCALES[scale]
    home = Path(tempfile.mkdtemp(prefix="lp", dir="/tmp"))
    env, stop_services = _database_env(home)
    try:
        env.update(
            {
                "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only"),
                "LOUPE_HOME": str(home),
                "LOUPE_STORAGE": "local",
                "LOUPE_OBJECTS_DIR": str(home / "objects"),
                "LOUPE_PRELABEL_BATCH": str(BATCH),
                "DJANGO_SETTINGS_MODULE": "config.settings",
            }
        )
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        return _measure(count)
    finally:
        if stop_services is not None:
            stop_services()


def _images(count: int) -> list[bytes]:
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    encoded = []
    for i in range(count):
        image = Image.fromarray(photos[i % len(photos)]).convert("RGB").resize((512, 512))
        if i // len(photos) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # not all byte-identical
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85 + i % 10)
        encoded.append(out.getvalue())
    return encoded


def _texts(count: int) -> list[bytes]:
    return [
        " ".join(SENTENCES[(i + k) % len(SENTENCES)].format(n=1 + (i + k) % 28) for k in range(4)).encode()
        for i in range(count)
    ]


def _measure(count: int) -> list[Figure]:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from labeling.models import ModelVersion, Prediction
    from labeling.prelabel import batch_size_of, predictor_for
    from labeling.services import tasks_ensure
    from projects import jobs
    from projects import services as project_services
    from projects.access import org_access
    from projects.models import Job

    user = User.objects.create_user(username="bench")
    org = project_services.organization_create(actor=user, name="Bench", slug="bench")
    project = project_services.project_create(
        actor=user, access=org_access(user=user, organization_id=org.pk), name="Bench"
    )
    _, token = project_services.api_token_create(user=user, name="bench")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")
    url = f"/api/v1/projects/{project.pk}"
    assert client.post(f"{url}/schemas", {"spec": SPEC}, format="json").status_code == 201
    datasets = {"image": _store(org, project, "image", _images(count)),
                "text": _store(org, project, "text", _texts(count))}  # fmt: skip
    tasks_ensure(project.pk)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum would after an import this size

    figures: list[Figure] = []
    ratios = []
    starts = []
    for name, builtin, modality, label_map in (
        ("face", "opencv-haar-faces", "image", {"face": "face"}),
        ("ner", "spacy-en-ner", "text",
         {"PERSON": "person", "GPE": "place", "ORG": "organization", "DATE": "date"}),
    ):  # fmt: skip
        response = client.post(
            f"{url}/models",
            {"name": name, "version": "1", "kind": "builtin", "builtin": builtin, "label_map": label_map},
            format="json",
        )
        assert response.status_code == 201, response.content
        version = ModelVersion.objects.select_related("model").get(id=response.json()["id"])
        predictor = predictor_for(version)  # loaded once, as in a worker that ran a job before
        batch_size = batch_size_of(version)  # the job's batches, for a like-for-like loop

        from labeling.models import Task

        tasks = list(
            Task.objects.filter(project=project, item__modality=modality)
            .select_related("item__primary")
            .order_by("id")
        )
        raw_before = _raw_rate(predictor, tasks, batch_size)
        started = time.perf_counter()
        response = client.post(
            f"{url}/prelabel",
            {"model_version": version.pk, "filter": {"dataset": datasets[modality]}},
            format="json",
        )
        starts.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 202, response.content
        job_id = response.json()["id"]
        while jobs.job_execute(job_id=job_id) == "sliced":
            pass
        elapsed = time.perf_counter() - started
        job = Job.objects.get(id=job_id)
        if job.state != "succeeded" or Prediction.objects.filter(source=version).count() != len(tasks):
            raise RuntimeError(f"the {name} job ended {job.state}: {job.failure} {job.result}")
        rate = len(tasks) / elapsed
        # The loop again, warm: the faster of the two is the model's own speed (a warm-up or a
        # slow spell during one loop must not flatter the job).
        raw = max(raw_before, _raw_rate(predictor, tasks, batch_size))
        figures += [
            Figure(f"prelabel_{name}_items_per_s", rate, "items/s"),
            Figure(f"prelabel_{name}_raw_items_per_s", raw, "items/s"),
        ]
        ratios.append(rate / raw)
    figures.append(Figure("prelabel_job_to_raw_ratio", min(ratios), "x"))
    figures.append(Figure("prelabel_start_ms", max(starts), "ms"))
    return figures


def _raw_rate(predictor: Any, tasks: list[Any], batch_size: int) -> float:
    """Items per second through the predictor in a plain loop, bytes read as the job reads them."""
    from labeling.prelabel import model_inputs

    started = time.perf_counter()
    for at in range(0, len(tasks), batch_size):
        batch = tasks[at : at + batch_size]
        predictor.predict(model_inputs([(t.pk, t.item) for t in batch], urls=False))
    return len(tasks) / (time.perf_counter() - started)


def _store(org: Any, project: Any, modality: str, contents: list[bytes]) -> int:
    import hashlib

    from PIL import Image

    from storage.models import Blob, Dataset, Item
    from storage.objects import object_store

    store = object_store()
    dataset = Dataset.objects.create(organization=org, name=f"{modality}s")
    dataset.projects.add(project)
    items = []
    for i, data in enumerate(contents):
        digest = hashlib.sha256(data).hexdigest()
        key = f"blobs/{digest[:2]}/{digest[2:4]}/{digest}"
        blob, created = Blob.objects.get_or_create(
            sha256=digest, defaults={"size": len(data), "media_type": "x", "key": key}
        )
        if created:
            store.put_bytes(key, data, content_type="application/octet-stream")
        if modality == "image":
            width, height = Image.open(io.BytesIO(data)).size
            meta: dict[str, Any] = {"width": width, "height": height, "format": "JPEG"}
            name, media_type = f"images/{i:05d}.jpg", "image/jpeg"
        else:
            meta = {"length": len(data.decode()), "lines": 1, "encoding": "utf-8"}
            name, media_type = f"texts/{i:05d}.txt", "text/plain"
        items.append(Item(dataset=dataset, name=name, modality=modality, media_type=media_type, meta=meta,
                          primary=blob))  # fmt: skip
    Item.objects.bulk_create(items, batch_size=2000)
    return int(dataset.pk)
