"""Media probing and thumbnails: pure functions on files these tests make, no database.

Every file is written here (Pillow, soundfile, PyAV, laspy, pydicom, numpy) so each fact the
probe reports can be checked against what was written.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import av
import laspy
import numpy as np
import pydicom
import pytest
import soundfile
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import ExifTags, Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from storage.media import (
    DEFAULT_LIMITS,
    Probe,
    ProbeError,
    ProbeLimits,
    image_phash,
    make_thumbnail,
    phash_distance,
    probe_file,
)

# --- helpers -----------------------------------------------------------------------------------


def probe(path: Path, filename: str | None = None, limits: ProbeLimits = DEFAULT_LIMITS) -> Probe:
    """probe_file, checking on the way that meta survives JSON unchanged (it goes to a JSONB)."""
    result = probe_file(path, filename=filename or path.name, limits=limits)
    assert json.loads(json.dumps(result.meta, allow_nan=False)) == result.meta
    return result


def refusal(path: Path, filename: str | None = None, limits: ProbeLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ProbeError) as caught:
        probe_file(path, filename=filename or path.name, limits=limits)
    assert caught.value.message
    return caught.value.code


def thumbnail_of(path: Path, result: Probe) -> Image.Image:
    data = make_thumbnail(path, result)
    assert data is not None
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP"
    assert max(image.size) <= 256
    image.load()
    return image.convert("RGB")


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(value) for value in np.asarray(image)[y, x].reshape(-1))


def colours_top_and_bottom(image: Image.Image) -> tuple[str, str]:
    """Which of red and blue clearly fills the top and the bottom of a two-colour picture."""

    def colour(y: int) -> str:
        red, _, blue = pixel(image, image.width // 2, y)
        return "red" if red > blue + 100 else "blue" if blue > red + 100 else "mixed"

    return colour(image.height // 8), colour(image.height * 7 // 8)


def truncate(path: Path, keep: int | float, name: str | None = None) -> Path:
    data = path.read_bytes()
    cut = path.with_name(name or f"cut-{path.name}")
    cut.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    return cut


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height 1-bit pixels and holds almost no data: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def two_colour_image(width: int = 64, height: int = 32) -> Image.Image:
    """Left half red, right half blue: enough to see which way a thumbnail was turned."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    return image


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    container: str | None = None,
    frames: int = 30,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    rotation: int = 0,
) -> Path:
    width, height = size
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=fps)
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        picture = av.VideoFrame.from_ndarray(np.asarray(two_colour_image(width, height)), format="rgb24")
        for _ in range(frames):
            for packet in stream.encode(picture):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def write_tone(path: Path, *, codec: str, container: str, seconds: float = 1.0, rate: int = 44100) -> Path:
    samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, AudioStream)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def write_dicom(path: Path, *, frames: int = 1, pixels: bool = True, **tags: Any) -> Path:
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = CTImageStorage
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = file_meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.Manufacturer = "Acme Medical"
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    if pixels:
        dataset.Rows, dataset.Columns = 64, 32
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
        dataset.PixelRepresentation, dataset.SamplesPerPixel = 0, 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
        dataset.WindowCenter, dataset.WindowWidth = 40, 400
        if frames > 1:
            dataset.NumberOfFrames = frames
        ramp = np.tile(np.linspace(0, 2048, 32, dtype=np.uint16), (frames * 64, 1))
        dataset.PixelData = ramp.tobytes()
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_pcd(path: Path, points: np.ndarray, *, data: str, declared: int | None = None) -> Path:
    count = declared if declared is not None else len(points)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\n"
        "VERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
        f"WIDTH {count}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {count}\nDATA {data}\n"
    ).encode()
    if data == "ascii":
        body = "".join(" ".join(f"{value:g}" for value in point) + "\n" for point in points).encode()
    else:
        body = points.astype("<f4").tobytes()
    path.write_bytes(header + body)
    return path


POINTS = np.array(
    [[0.5, 1.0, -2.0, 10.0], [-1.25, 2.0, 0.0, 20.0], [3.0, -4.5, 2.5, 30.0], [0.0, 0.0, 10.0, 40.0]],
    dtype=np.float32,
)
POINTS_BOUNDS = {"min": [-1.25, -4.5, -2.0], "max": [3.0, 2.0, 10.0]}


# --- images ------------------------------------------------------------------------------------


def test_it_reads_a_jpeg_size_mode_and_format_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (10, 200, 30)).save(path, quality=90)

    result = probe(path)

    assert result.modality == "image"
    assert result.media_type == "image/jpeg"
    assert result.meta == {
        "format": "JPEG",
        "width": 640,
        "height": 480,
        "exif_orientation": 1,
        "mode": "RGB",
        "frames": 1,
    }


def test_it_swaps_width_and_height_of_a_jpeg_turned_by_exif_orientation_6(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways: show it turned 90° clockwise
    two_colour_image(64, 32).save(path, exif=exif, quality=95)

    result = probe(path)
    thumbnail = thumbnail_of(path, result)

    assert (result.meta["width"], result.meta["height"], result.meta["exif_orientation"]) == (32, 64, 6)
    assert thumbnail.size == (32, 64)
    # Turned clockwise, the stored left (red) half is now on top and the right (blue) below.
    assert colours_top_and_bottom(thumbnail) == ("red", "blue")


def test_it_believes_the_bytes_over_the_name_for_a_png_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "really-a-png.jpg"
    Image.new("RGBA", (20, 10), (1, 2, 3, 128)).save(path, format="PNG")

    result = probe(path)

    assert result.media_type == "image/png"
    assert result.meta["format"] == "PNG"
    assert result.meta["mode"] == "RGBA"


def test_it_counts_the_frames_of_an_animated_gif(tmp_path: Path) -> None:
    path = tmp_path / "spinner.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "green", "blue", "white")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)

    result = probe(path)

    assert result.media_type == "image/gif"
    assert result.meta["frames"] == 4
    assert thumbnail_of(path, result).size == (16, 16)


@pytest.mark.parametrize(
    ("mode", "file_format"),
    [
        ("1", "PNG"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("CMYK", "JPEG"),
        ("F", "TIFF"),
    ],
)
def test_it_makes_an_8_bit_thumbnail_from_any_image_mode(tmp_path: Path, mode: str, file_format: str) -> None:
    path = tmp_path / f"image.{file_format.lower()}"
    if mode in ("I;16", "F"):
        ramp = np.linspace(0, 60000, 300 * 200).reshape(200, 300)
        Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.float32)).save(
            path, format=file_format
        )
    else:
        Image.new(mode, (300, 200)).save(path, format=file_format)

    result = probe(path)
    thumbnail = thumbnail_of(path, result)

    assert thumbnail.size == (256, 171)


def test_it_refuses_a_decompression_bomb_from_its_header_alone(tmp_path: Path) -> None:
    # 30000 x 30000 declared in a 100-byte file: decoding would need 900 megapixels of buffer.
    path = png_header_only(tmp_path / "bomb.png", 30_000, 30_000)

    assert path.stat().st_size < 200
    assert refusal(path) == "decompression_bomb"


def test_it_keeps_its_own_pixel_limit_whatever_pillows_global_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = png_header_only(tmp_path / "big.png", 20_000, 10_000)  # 200 megapixels
    small_limit = ProbeLimits(max_image_pixels=100 * 100)
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (200, 100)).save(photo)

    assert refusal(path) == "decompression_bomb"
    assert refusal(photo, limits=small_limit) == "decompression_bomb"
    with pytest.raises(ProbeError, match="decompression_bomb"):
        image_phash(path)


def test_it_turns_pillows_bomb_warning_into_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)  # stricter than ours: Pillow warns
    path = tmp_path / "photo.png"
    Image.new("RGB", (60, 60)).save(path)

    assert refusal(path) == "decompression_bomb"


def test_it_refuses_a_truncated_jpeg_when_its_pixels_are_decoded(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.effect_noise((320, 240), 64).convert("RGB").save(path, quality=90)
    header_cut = truncate(path, 100, "header-cut.jpg")
    data_cut = truncate(path, 0.5, "data-cut.jpg")

    assert refusal(header_cut) == "corrupt"
    result = probe(data_cut)  # the header is whole: the probe cannot tell
    with pytest.raises(ProbeError, match="corrupt"):
        make_thumbnail(data_cut, result)
    with pytest.raises(ProbeError, match="corrupt"):
        image_phash(data_cut)


# --- perceptual hashes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, pixels in (
        ("astronaut", skimage.data.astronaut()),
        ("camera", skimage.data.camera()),
        ("coffee", skimage.data.coffee()),
    ):
        paths[name] = folder / f"{name}.jpg"
        Image.fromarray(pixels).convert("RGB").save(paths[name], quality=92)
    return paths


def test_phash_is_a_signed_64_bit_integer_that_fits_a_postgres_bigint(photos: dict[str, Path]) -> None:
    hashes = [image_phash(path) for path in photos.values()]

    assert all(-(2**63) <= value < 2**63 for value in hashes)
    assert hashes == [image_phash(path) for path in photos.values()]  # deterministic


def test_phash_stays_close_for_the_same_photo_reencoded_and_resized(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    for name, path in photos.items():
        copy = tmp_path / f"{name}-small.jpg"
        with Image.open(path) as original:
            original.resize((original.width * 3 // 5, original.height * 3 // 5)).save(copy, quality=40)

        assert phash_distance(image_phash(path), image_phash(copy)) <= 8, name


def test_phash_sets_different_photos_far_apart(photos: dict[str, Path]) -> None:
    hashes = {name: image_phash(path) for name, path in photos.items()}

    for first in hashes:
        for second in hashes:
            if first < second:
                assert phash_distance(hashes[first], hashes[second]) >= 20, (first, second)


def test_phash_hashes_the_upright_picture_whatever_exif_says(photos: dict[str, Path], tmp_path: Path) -> None:
    upright = photos["coffee"]
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    with Image.open(upright) as image:
        # Stored turned counter-clockwise, tagged to be shown turned back clockwise.
        image.transpose(Image.Transpose.ROTATE_90).save(sideways, quality=92, exif=exif)

    assert phash_distance(image_phash(upright), image_phash(sideways)) <= 4


def test_phash_distance_counts_the_bits_that_differ() -> None:
    assert phash_distance(0, 0) == 0
    assert phash_distance(0, -1) == 64  # -1 is all 64 bits set in two's complement
    assert phash_distance(-(2**63), 2**63 - 1) == 64
    assert phash_distance(0b1011, 0b0001) == 2


# --- text --------------------------------------------------------------------------------------


def test_it_counts_characters_not_bytes_in_utf_8_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("naïve café\nπ ≈ 3.14\nlast line without a break", encoding="utf-8")

    result = probe(path)

    assert result.modality == "text"
    assert result.media_type == "text/plain"
    assert result.meta == {"encoding": "utf-8", "bom": False, "length": 45, "lines": 3}


def test_it_reads_utf_16_by_its_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes("línea uno\r\nlínea dos\r\n".encode("utf-16"))  # Python writes the BOM

    result = probe(path)

    assert result.meta == {"encoding": "utf-16-le", "bom": True, "length": 22, "lines": 2}


def test_it_falls_back_to_windows_1252_for_legacy_text(tmp_path: Path) -> None:
    path = tmp_path / "legacy.csv"
    path.write_bytes("name,price\n“Crème brûlée”,5€\n".encode("cp1252"))

    result = probe(path)

    assert result.media_type == "text/csv"
    assert result.meta == {"encoding": "cp1252", "bom": False, "length": 29, "lines": 2}


def test_it_counts_lines_ended_by_lf_crlf_or_a_lone_cr(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"one\ntwo\r\nthree\rfour\n")

    assert probe(path).meta["lines"] == 4


def test_it_refuses_binary_data_named_txt(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(np.random.default_rng(7).bytes(4096))

    assert refusal(path) == "unsupported_type"


def test_it_refuses_text_that_turns_binary_past_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"a line of text\n" * 10_000 + b"\x00\x01\x02\x03" * 100)

    assert refusal(path) == "unsupported_type"


def test_it_refuses_svg_as_unsafe_and_never_records_html_as_html(tmp_path: Path) -> None:
    svg = tmp_path / "logo.svg"
    svg.write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>')
    page = tmp_path / "page.html"
    page.write_text("<html><body><script>alert(1)</script></body></html>")

    assert refusal(svg) == "unsafe"
    assert probe(page).media_type == "text/plain"


def test_text_that_mentions_a_pdf_header_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# How PDFs start\n\nEvery file begins with `%PDF-1.7` and a binary comment.\n")

    assert (probe(path).modality, probe(path).media_type) == ("text", "text/markdown")


def test_it_refuses_text_past_the_text_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("x" * 2000)

    assert refusal(path, limits=ProbeLimits(max_text_bytes=1000)) == "too_large"


# --- audio -------------------------------------------------------------------------------------


def test_it_reads_a_wav_exactly(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.zeros((12_000, 2), dtype=np.float32), 8000, subtype="PCM_16")

    result = probe(path)

    assert result.modality == "audio"
    assert result.media_type == "audio/wav"
    assert result.meta == {
        "duration_s": 1.5,
        "sample_rate": 8000,
        "channels": 2,
        "format": "WAV",
        "codec": "PCM_16",
    }


def test_it_reads_mp3_with_libsndfile_and_m4a_with_mutagen(tmp_path: Path) -> None:
    mp3 = probe(write_tone(tmp_path / "tone.mp3", codec="libmp3lame", container="mp3"))
    m4a = probe(write_tone(tmp_path / "tone.m4a", codec="aac", container="ipod"))

    assert mp3.media_type == "audio/mpeg"
    assert (mp3.meta["format"], mp3.meta["sample_rate"], mp3.meta["channels"]) == ("MP3", 44100, 1)
    assert m4a.media_type == "audio/mp4"
    assert (m4a.meta["format"], m4a.meta["sample_rate"], m4a.meta["channels"]) == ("MP4", 44100, 1)
    for result in (mp3, m4a):
        # Encoders pad to whole frames: a little more than the second written.
        assert result.meta["duration_s"] == pytest.approx(1.0, abs=0.1)
        assert make_thumbnail(tmp_path / "tone.mp3", result) is None


def test_it_refuses_a_wav_cut_inside_its_header(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.zeros(800, dtype=np.float32), 8000)

    assert refusal(truncate(path, 20)) == "corrupt"


# --- video -------------------------------------------------------------------------------------


def test_it_reads_frames_fps_and_duration_of_an_mp4(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4")

    result = probe(path)

    assert result.modality == "video"
    assert result.media_type == "video/mp4"
    assert result.meta == {
        "duration_s": 3.0,
        "fps": 10.0,
        "frames": 30,
        "frames_estimated": False,
        "width": 64,
        "height": 48,
        "rotation": 0,
        "codec": "h264",
        "has_audio": False,
    }
    assert thumbnail_of(path, result).size == (64, 48)  # never enlarged


def test_it_shows_a_phone_video_the_way_its_display_matrix_turns_it(tmp_path: Path) -> None:
    path = write_video(tmp_path / "phone.mp4", codec="mpeg4", size=(64, 32), rotation=90)

    result = probe(path)
    thumbnail = thumbnail_of(path, result)

    assert (result.meta["width"], result.meta["height"], result.meta["rotation"]) == (32, 64, 90)
    assert thumbnail.size == (32, 64)
    # Turned counter-clockwise, the stored right (blue) half is now on top and the left below.
    assert colours_top_and_bottom(thumbnail) == ("blue", "red")


def test_it_estimates_the_frames_of_a_webm_whose_header_does_not_count_them(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.webm", codec="libvpx", container="webm", frames=20)

    result = probe(path)

    assert result.media_type == "video/webm"
    assert (result.meta["frames"], result.meta["frames_estimated"]) == (20, True)
    assert result.meta["codec"] == "vp8"


def test_it_files_an_mp4_with_only_a_sound_track_as_audio(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "voice.mp4", codec="aac", container="mp4")

    result = probe(path)

    assert (result.modality, result.media_type) == ("audio", "audio/mp4")
    assert result.meta["sample_rate"] == 44100
    assert result.meta["duration_s"] == pytest.approx(1.0, abs=0.1)


def test_it_refuses_a_truncated_mp4(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4")

    assert refusal(truncate(path, 0.6)) == "corrupt"


# --- point clouds ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["ascii", "binary"])
def test_it_reads_points_fields_and_bounds_of_a_pcd(tmp_path: Path, data: str) -> None:
    path = write_pcd(tmp_path / "scan.pcd", POINTS, data=data)

    result = probe(path)

    assert (result.modality, result.media_type) == ("pointcloud", "application/x-pcd")
    assert result.meta == {
        "format": "pcd",
        "version": "0.7",
        "data": data,
        "points": 4,
        "fields": ["x", "y", "z", "intensity"],
        "width": 4,
        "height": 1,
        "bounds": POINTS_BOUNDS,
    }
    assert make_thumbnail(path, result) is None


def test_it_leaves_the_holes_of_an_organized_pcd_out_of_its_bounds(tmp_path: Path) -> None:
    with_hole = np.vstack([POINTS, [[np.nan, np.nan, np.nan, 0.0]]]).astype(np.float32)

    assert probe(write_pcd(tmp_path / "scan.pcd", with_hole, data="binary")).meta["bounds"] == POINTS_BOUNDS


def test_it_reads_the_header_of_a_compressed_pcd_but_no_bounds(tmp_path: Path) -> None:
    path = write_pcd(tmp_path / "scan.pcd", POINTS, data="binary_compressed")

    result = probe(path)

    assert (result.meta["data"], result.meta["points"], result.meta["bounds"]) == (
        "binary_compressed",
        4,
        None,
    )


@pytest.mark.parametrize("data", ["ascii", "binary"])
def test_it_refuses_a_pcd_holding_fewer_points_than_it_declares(tmp_path: Path, data: str) -> None:
    path = write_pcd(tmp_path / "scan.pcd", POINTS, data=data, declared=5)

    assert refusal(path) == "corrupt"


@pytest.mark.parametrize(
    ("name", "media_type"), [("scan.las", "application/vnd.las"), ("scan.laz", "application/vnd.laszip")]
)
def test_it_reads_las_and_laz_with_laspy(tmp_path: Path, name: str, media_type: str) -> None:
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales, header.offsets = np.array([0.001, 0.001, 0.001]), np.zeros(3)
    cloud = laspy.LasData(header)
    cloud.x, cloud.y, cloud.z = POINTS[:, 0], POINTS[:, 1], POINTS[:, 2]
    path = tmp_path / name
    cloud.write(path, laz_backend=laspy.LazBackend.Lazrs if name.endswith(".laz") else None)

    result = probe(path)

    assert result.media_type == media_type
    assert result.meta["format"] == name[-3:]
    assert (result.meta["points"], result.meta["point_format"], result.meta["version"]) == (4, 3, "1.2")
    assert result.meta["fields"][:4] == ["X", "Y", "Z", "intensity"]
    assert result.meta["bounds"] == POINTS_BOUNDS
    assert refusal(truncate(path, len(path.read_bytes()) - 30)) == "corrupt"


def test_it_reads_a_kitti_scan_by_its_bin_extension(tmp_path: Path) -> None:
    path = tmp_path / "000042.bin"
    POINTS.astype("<f4").tofile(path)

    result = probe(path)

    assert result.media_type == "application/x-kitti-velodyne"
    assert result.meta == {
        "format": "kitti",
        "points": 4,
        "fields": ["x", "y", "z", "intensity"],
        "bounds": POINTS_BOUNDS,
    }


def test_it_refuses_a_kitti_scan_that_is_not_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "000042.bin"
    path.write_bytes(POINTS.astype("<f4").tobytes()[:-4])

    assert refusal(path) == "corrupt"


def test_it_does_not_take_any_bin_file_for_a_kitti_scan(tmp_path: Path) -> None:
    path = tmp_path / "firmware.bin"
    path.write_bytes(np.random.default_rng(3).bytes(1024))

    assert refusal(path) == "unsupported_type"


# --- DICOM -------------------------------------------------------------------------------------

PATIENT_TAGS: dict[str, Any] = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-0012345",
    "PatientBirthDate": "19700101",
    "PatientAddress": "12 Rue des Lilas, Lyon",
    "OtherPatientIDs": "ALT-998877",
    "InstitutionName": "Saint Somewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC-556677",
    "StudyDescription": "Chest CT for Jane Doe",
    "DeviceSerialNumber": "SN-42-4242",
}


def test_it_reads_dicom_image_facts_and_never_a_patient_detail(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "slice.dcm", frames=3, **PATIENT_TAGS)
    dataset = pydicom.dcmread(path)

    result = probe(path)
    as_json = json.dumps(result.meta)

    assert (result.modality, result.media_type) == ("dicom", "application/dicom")
    assert result.meta["modality"] == "CT"
    assert result.meta["manufacturer"] == "Acme Medical"
    assert (result.meta["rows"], result.meta["columns"], result.meta["frames"]) == (64, 32, 3)
    assert len(result.meta["study_uid_hash"]) == len(result.meta["series_uid_hash"]) == 32
    for value in [
        *PATIENT_TAGS.values(),
        "Doe",
        "Jane",
        "MRN",
        dataset.StudyInstanceUID,
        dataset.SeriesInstanceUID,
    ]:
        assert value not in as_json


def test_it_groups_dicom_slices_by_the_same_series_hash(tmp_path: Path) -> None:
    series = generate_uid()
    first = probe(write_dicom(tmp_path / "1.dcm", SeriesInstanceUID=series))
    second = probe(write_dicom(tmp_path / "2.dcm", SeriesInstanceUID=series))
    other = probe(write_dicom(tmp_path / "3.dcm"))

    assert first.meta["series_uid_hash"] == second.meta["series_uid_hash"] != other.meta["series_uid_hash"]


def test_it_makes_a_windowed_dicom_thumbnail(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "slice.dcm")

    thumbnail = thumbnail_of(path, probe(path)).convert("L")

    assert thumbnail.size == (32, 64)
    # The ramp runs 0..2048 (HU -1024..1024) left to right; the window is -160..240 HU.
    assert pixel(thumbnail, 1, 32)[0] < 10
    assert pixel(thumbnail, 30, 32)[0] > 245


def test_it_refuses_a_dicom_frame_past_the_pixel_limit(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "slice.dcm")

    assert refusal(path, limits=ProbeLimits(max_image_pixels=32 * 63)) == "decompression_bomb"


def test_it_refuses_dicom_cut_short_or_without_an_image(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "slice.dcm")

    assert refusal(truncate(path, len(path.read_bytes()) - 100)) == "corrupt"
    assert refusal(write_dicom(tmp_path / "report.dcm", pixels=False)) == "unsupported_type"


# --- PDF ---------------------------------------------------------------------------------------


@pytest.fixture
def three_page_pdf(tmp_path: Path) -> Path:
    path = tmp_path / "scan.pdf"
    pages = [two_colour_image(200, 100)] + [Image.new("RGB", (200, 100), "white")] * 2
    pages[0].save(path, save_all=True, append_images=pages[1:])  # 72 dpi: one pixel, one point
    return path


def test_it_reads_pages_and_the_first_page_size_of_a_pdf(three_page_pdf: Path) -> None:
    result = probe(three_page_pdf)

    assert (result.modality, result.media_type) == ("pdf", "application/pdf")
    assert result.meta["pages"] == 3
    assert (result.meta["width_pt"], result.meta["height_pt"]) == (200.0, 100.0)
    assert result.meta["encrypted"] is False
    thumbnail = thumbnail_of(three_page_pdf, result)
    assert thumbnail.size == (256, 128)
    assert pixel(thumbnail, 10, 64)[0] > 200  # the red half of the first page


def test_it_flags_an_encrypted_pdf_and_refuses_one_that_needs_a_password(
    three_page_pdf: Path, tmp_path: Path
) -> None:
    from pypdf import PdfWriter

    def encrypted(name: str, user_password: str) -> Path:
        writer = PdfWriter(clone_from=three_page_pdf)
        writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
        writer.write(tmp_path / name)
        return tmp_path / name

    assert probe(encrypted("permissions.pdf", "")).meta["encrypted"] is True
    assert refusal(encrypted("locked.pdf", "secret")) == "unsupported_type"


def test_it_finds_a_pdf_header_after_leading_junk_when_the_name_agrees(
    three_page_pdf: Path, tmp_path: Path
) -> None:
    path = tmp_path / "from-a-mail-gateway.pdf"
    path.write_bytes(b"X-Junk: 1\r\n\r\n" + three_page_pdf.read_bytes())

    assert probe(path).meta["pages"] == 3


def test_it_refuses_a_damaged_pdf(tmp_path: Path) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.7\n" + np.random.default_rng(5).bytes(2000))

    assert refusal(path) == "corrupt"


# --- what is refused whatever its name ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        ("empty.txt", b"", "unsupported_type"),
        ("mystery.dat", bytes(range(256)) * 8, "unsupported_type"),
        ("photos.jpg", b"PK\x03\x04" + bytes(100), "unsupported_type"),
        ("figure.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "unsafe"),
        ("photo.heic", b"\x00\x00\x00\x18ftypheic" + bytes(100), "unsupported_type"),
        ("photo.jpg", b"\xff\xd8\xff\xe0" + bytes(20), "corrupt"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(30), "corrupt"),
        ("clip.mp4", b"\x00\x00\x00\x20ftypisom" + bytes(200), "corrupt"),
        ("tone.flac", b"fLaC" + bytes(50), "corrupt"),
        ("slice.dcm", bytes(128) + b"DICM" + bytes(10), "corrupt"),
        ("scan.pcd", b"VERSION 0.7\nFIELDS x y\nDATA ascii\n", "corrupt"),
    ],
)
def test_it_refuses_what_it_cannot_or_must_not_read(
    tmp_path: Path, name: str, content: bytes, code: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    assert refusal(path) == code


def test_it_refuses_a_file_past_the_size_limit_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64)).save(path)

    assert refusal(path, limits=ProbeLimits(max_bytes=100)) == "too_large"


def test_probe_errors_only_take_the_documented_codes() -> None:
    with pytest.raises(ValueError, match="unknown probe error code"):
        ProbeError("oops", "no such code")  # type: ignore[arg-type]


def test_modalities_without_a_picture_have_no_thumbnail(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")

    assert make_thumbnail(path, probe(path)) is None
