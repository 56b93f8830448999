from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from projects import jobs
from projects.models import Job
from storage.objects import ObjectStore, object_store
from tests.conftest import World


@pytest.fixture
def local_store(settings: Any, tmp_path: Path) -> ObjectStore:
    settings.LOUPE_STORAGE = "local"
    settings.LOUPE_OBJECTS_DIR = tmp_path / "objects"
    return object_store()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """The contract suite runs on both backends."""
    return request.getfixturevalue(f"{request.param}_store")


# --- Ingest: run jobs, serve files, post uploads and manifests -------------------------------


def run(job_id: int) -> dict[str, Any]:
    """Run a job to the end like a worker would, and return it."""
    while jobs.job_execute(job_id=job_id) == "sliced":
        pass
    return Job.objects.filter(id=job_id).values()[0]


@pytest.fixture
def objects_dir(settings: Any, tmp_path: Path) -> Path:
    settings.LOUPE_STORAGE = "local"
    settings.LOUPE_OBJECTS_DIR = tmp_path / "objects"
    return settings.LOUPE_OBJECTS_DIR


@pytest.fixture
def dataset(world: World, objects_dir: Path) -> dict[str, Any]:
    response = world.client("manager").post(
        "/api/v1/datasets",
        {"organization": world.org.id, "name": "Street photos", "projects": [world.project.id]},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def upload(
    client: APIClient, dataset_id: int, files: dict[str, bytes], meta: dict[str, Any] | None = None
) -> Any:
    payload: dict[str, Any] = {
        "files": [SimpleUploadedFile(name, data) for name, data in files.items()],
        "paths": json.dumps(list(files)),
    }
    if meta:
        payload["meta"] = json.dumps(meta)
    return client.post(f"/api/v1/datasets/{dataset_id}/uploads", payload, format="multipart")


class FileServer(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (path → bytes) on 127.0.0.1 and records every path asked for."""

    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def file_server() -> Iterator[tuple[str, type[FileServer]]]:
    handler = type("Files", (FileServer,), {"files": {}, "hits": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def manifest(client: APIClient, dataset_id: int, rows: list[dict[str, Any]], **extra: Any) -> Any:
    body = "\n".join(json.dumps(row) for row in rows).encode()
    url = f"/api/v1/datasets/{dataset_id}/imports/manifest"
    return client.post(url, {"manifest": SimpleUploadedFile("m.jsonl", body), **extra}, format="multipart")
