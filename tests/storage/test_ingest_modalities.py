"""Acceptance: a folder of mixed files, every modality, brought in through the API alone."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from tests.conftest import World, assert_error
from tests.storage.test_ingest import dataset, objects_dir, run  # noqa: F401  (fixtures)
from tests.storage.test_media import POINTS, write_dicom, write_pcd, write_tone, write_video

pytestmark = pytest.mark.django_db


def mixed_folder(folder: Path) -> dict[str, bytes]:
    """One file of every supported modality, written by the test."""
    image = folder / "photo.jpg"
    Image.new("RGB", (320, 200), (40, 120, 200)).save(image, "JPEG")
    pdf = folder / "report.pdf"
    pages = [Image.new("RGB", (200, 280), colour) for colour in ("white", "gray", "black")]
    pages[0].save(pdf, "PDF", save_all=True, append_images=pages[1:])
    kitti = folder / "sweep.bin"
    POINTS.astype("<f4").tofile(kitti)
    files = {
        "camera/photo.jpg": image,
        "docs/report.pdf": pdf,
        "notes/readme.txt": folder / "readme.txt",
        "audio/tone.wav": write_tone(folder / "tone.wav", codec="pcm_s16le", container="wav", seconds=1.5),
        "video/clip.mp4": write_video(folder / "clip.mp4", frames=30, fps=10),
        "lidar/frame.pcd": write_pcd(folder / "frame.pcd", POINTS, data="binary"),
        "lidar/sweep.bin": kitti,
        "scans/ct.dcm": write_dicom(folder / "ct.dcm", PatientName="Doe^Jane", PatientID="P-1234"),
    }
    (folder / "readme.txt").write_text("hello annotators\n")
    return {name: path.read_bytes() for name, path in files.items()}


def check_items(world: World, dataset_id: int, expected: dict[str, bytes]) -> None:
    client = world.client("annotator")
    items = {
        i["name"]: i
        for i in client.get(f"/api/v1/datasets/{dataset_id}/items?page_size=100").json()["results"]
    }
    assert set(items) == set(expected)
    modality = {name: item["modality"] for name, item in items.items()}
    assert modality == {
        "camera/photo.jpg": "image", "docs/report.pdf": "pdf", "notes/readme.txt": "text",
        "audio/tone.wav": "audio", "video/clip.mp4": "video", "lidar/frame.pcd": "pointcloud",
        "lidar/sweep.bin": "pointcloud", "scans/ct.dcm": "dicom",
    }  # fmt: skip
    meta = {name: item["meta"] for name, item in items.items()}
    assert (meta["camera/photo.jpg"]["width"], meta["camera/photo.jpg"]["height"]) == (320, 200)
    assert meta["docs/report.pdf"]["pages"] == 3
    assert meta["audio/tone.wav"]["sample_rate"] == 44100 and meta["audio/tone.wav"]["channels"] == 1
    assert meta["audio/tone.wav"]["duration_s"] == pytest.approx(1.5, abs=0.01)
    assert meta["video/clip.mp4"]["frames"] == 30 and meta["video/clip.mp4"]["fps"] == pytest.approx(10)
    assert meta["lidar/frame.pcd"]["points"] == meta["lidar/sweep.bin"]["points"] == len(POINTS)
    assert (meta["scans/ct.dcm"]["rows"], meta["scans/ct.dcm"]["columns"]) == (64, 32)
    exposed = json.dumps(items["scans/ct.dcm"])
    assert "Doe" not in exposed and "P-1234" not in exposed
    with_thumbnails = {name for name, item in items.items() if item["thumbnail_url"]}
    assert {"camera/photo.jpg", "docs/report.pdf", "video/clip.mp4"} <= with_thumbnails
    for name in with_thumbnails:
        response = client.get(items[name]["thumbnail_url"])
        thumb = Image.open(io.BytesIO(b"".join(response.streaming_content)))
        assert thumb.format == "WEBP" and max(thumb.size) <= 256


def test_every_modality_by_direct_upload(world: World, dataset: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    files = mixed_folder(tmp_path)
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset['id']}/uploads",
        {
            "files": [SimpleUploadedFile(Path(n).name, d) for n, d in files.items()],
            "paths": json.dumps(list(files)),
        },
        format="multipart",
    )
    job = run(response.json()["id"])
    assert job["error_count"] == 0, world.client("manager").get(f"/api/v1/jobs/{job['id']}/errors").json()
    check_items(world, dataset["id"], files)


def test_every_modality_by_archive(world: World, dataset: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    files = mixed_folder(tmp_path)
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset['id']}/imports/archive",
        {"archive": SimpleUploadedFile("batch.zip", packed.getvalue())},
        format="multipart",
    )
    assert response.status_code == 202, response.content
    job = run(response.json()["id"])
    assert job["error_count"] == 0
    check_items(world, dataset["id"], files)


def test_a_hostile_archive_is_refused_with_its_reason_and_nothing_is_written(
    world: World,
    dataset: dict[str, Any],  # noqa: F811
    objects_dir: Path,  # noqa: F811
) -> None:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("../../etc/cron.d/evil", b"* * * * * root sh")
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset['id']}/imports/archive",
        {"archive": SimpleUploadedFile("evil.zip", packed.getvalue())},
        format="multipart",
    )
    assert_error(response, 400, "archive_path_traversal")
    assert not (objects_dir / "staging").exists()


def test_a_decompression_bomb_is_rejected_with_its_reason(world: World, dataset: dict[str, Any]) -> None:  # noqa: F811
    bomb = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(bomb, "PNG")  # 900 megapixels in a small file
    response = world.client("manager").post(
        f"/api/v1/datasets/{dataset['id']}/uploads",
        {"files": [SimpleUploadedFile("bomb.png", bomb.getvalue())]},
        format="multipart",
    )
    job = run(response.json()["id"])
    errors = world.client("manager").get(f"/api/v1/jobs/{job['id']}/errors").json()["results"]
    assert [(e["item"], e["code"]) for e in errors] == [("bomb.png", "decompression_bomb")]
    assert job["result"]["created"] == 0
