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
from tests.storage.conftest import manifest, run
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


def test_every_modality_by_direct_upload(world: World, dataset: dict[str, Any], tmp_path: Path) -> None:
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


def test_every_modality_by_archive(world: World, dataset: dict[str, Any], tmp_path: Path) -> None:
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
    dataset: dict[str, Any],
    objects_dir: Path,
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


def test_a_decompression_bomb_is_rejected_with_its_reason(world: World, dataset: dict[str, Any]) -> None:
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


def test_a_multi_sensor_frame_is_one_item_with_its_parts(
    world: World,
    dataset: dict[str, Any],
    file_server: Any,
    settings: Any,
    tmp_path: Path,
) -> None:
    base, handler = file_server
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    camera = io.BytesIO()
    Image.new("RGB", (640, 360), (90, 90, 30)).save(camera, "JPEG")
    handler.files.update({
        "/f1/lidar.pcd": write_pcd(tmp_path / "f1.pcd", POINTS, data="ascii").read_bytes(),
        "/f1/front.jpg": camera.getvalue(),
        "/f1/calib.txt": b"P0: 721.5 0 609.5 0 0 721.5 172.8 0 0 0 1 0\n",
    })  # fmt: skip
    row = {
        "name": "drive-7/frame-0001",
        "parts": {"lidar": {"url": f"{base}/f1/lidar.pcd"}, "cam_front": {"url": f"{base}/f1/front.jpg"},
                  "calib": {"url": f"{base}/f1/calib.txt"}},
        "primary": "lidar",
        "meta": {"weather": "fog"},
    }  # fmt: skip
    job = run(manifest(world.client("manager"), dataset["id"], [row]).json()["id"])
    assert (job["result"]["created"], job["error_count"]) == (1, 0)
    [item] = world.client("reviewer").get(f"/api/v1/datasets/{dataset['id']}/items").json()["results"]
    assert item["name"] == "drive-7/frame-0001" and item["modality"] == "multisensor"
    assert item["meta"]["primary"] == "lidar" and item["meta"]["user"] == {"weather": "fog"}
    assert {r: p["modality"] for r, p in item["meta"]["parts"].items()} == {
        "lidar": "pointcloud", "cam_front": "image", "calib": "text",
    }  # fmt: skip
    assert item["meta"]["parts"]["lidar"]["points"] == len(POINTS)
    assert {p["role"] for p in item["parts"]} == {"lidar", "cam_front", "calib"}
    front = next(p for p in item["parts"] if p["role"] == "cam_front")
    content = world.client("reviewer").get(front["content_url"])
    assert b"".join(content.streaming_content) == camera.getvalue()
    assert item["thumbnail_url"] is not None  # the camera's, since a point cloud has none

    again = run(manifest(world.client("manager"), dataset["id"], [row]).json()["id"])
    assert again["result"]["unchanged"] == 1


def test_a_frame_with_a_broken_part_is_rejected_whole_naming_the_part(
    world: World,
    dataset: dict[str, Any],
    file_server: Any,
    settings: Any,
) -> None:
    base, handler = file_server
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    handler.files.update({"/ok.txt": b"fine", "/bad.jpg": b"\xff\xd8\xff\xe0 not a jpeg"})
    row = {
        "name": "frame-2",
        "parts": {"calib": {"url": f"{base}/ok.txt"}, "cam": {"url": f"{base}/bad.jpg"}},
    }
    job = run(manifest(world.client("manager"), dataset["id"], [row]).json()["id"])
    assert job["result"]["rejected"] == 1
    [error] = world.client("manager").get(f"/api/v1/jobs/{job['id']}/errors").json()["results"]
    assert error["item"] == "frame-2" and "'cam'" in error["message"]


@pytest.mark.parametrize(
    "row",
    [
        {"parts": {"a": {"url": "https://x.test/a"}}},  # no name
        {"name": "f", "parts": {}},
        {"name": "f", "parts": {"a": {"url": "https://x.test/a"}}, "primary": "b"},
        {"name": "f", "parts": {"a/b": {"url": "https://x.test/a"}}},
        {"name": "f", "parts": {"a": {"key": "k", "url": "https://x.test/a"}}},
        {"url": "https://x.test/a", "primary": "a"},
    ],
)
def test_malformed_frames_are_refused_whole(
    world: World, dataset: dict[str, Any], row: dict[str, Any]
) -> None:
    assert_error(manifest(world.client("manager"), dataset["id"], [row]), 400)
