"""Video with PyAV (FFmpeg): stream facts from the container, and a thumbnail from ~10% in.

The probe reads the container header and decodes one frame, the only place FFmpeg exposes the
display rotation of phone videos; nothing else is decoded and nothing is read into memory whole.

FFmpeg is told which demuxer to use (from the sniffed type) and may only open local files:
left to guess, it would also accept playlists and concat scripts that make it open other files
or URLs named inside the upload.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from storage.media.base import (
    Probe,
    ProbeError,
    ProbeLimits,
    corrupt_on,
    encode_webp,
    fit_within,
    refuse_if_too_many_pixels,
)

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.stream import Stream
    from av.video.stream import VideoStream

_DEMUXERS = {
    "video/mp4": "mov",
    "video/quicktime": "mov",
    "video/3gpp": "mov",
    "video/webm": "matroska",
    "video/x-matroska": "matroska",
    "video/x-msvideo": "avi",
    "video/x-flv": "flv",
    "video/mpeg": "mpeg",
    "video/mp2t": "mpegts",
    "video/x-ms-asf": "asf",
    "video/ogg": "ogg",
}
# A container with a sound track and no picture is audio, under the matching audio type.
_AUDIO_TYPES = {
    "video/mp4": "audio/mp4",
    "video/quicktime": "audio/mp4",
    "video/3gpp": "audio/3gpp",
    "video/webm": "audio/webm",
    "video/x-matroska": "audio/x-matroska",
    "video/ogg": "audio/ogg",
}
_UPRIGHT = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
_THUMBNAIL_AT = 0.1  # of the duration: past black leaders and title cards
_MAX_FRAMES_AFTER_SEEK = 300  # a seek lands on the keyframe before; decode at most this far on
_CORRUPT = "The video is damaged or truncated and cannot be read."


def probe_video(path: Path, *, media_type: str, limits: ProbeLimits) -> Probe:
    import av

    with (
        corrupt_on((av.FFmpegError, OSError, ValueError), _CORRUPT),
        _open(path, media_type) as container,
    ):
        if not container.streams.video:
            if container.streams.audio:
                return _probe_sound_track(container, media_type)
            raise ProbeError("corrupt", "The file has neither a video nor an audio stream.")
        stream = _video_stream(container, limits)
        duration = _duration_s(container, stream)
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        fps = float(rate)
        if duration <= 0 or fps <= 0:
            raise ProbeError("corrupt", "The video stream has no duration or frame rate.")
        first_frame = next(container.decode(stream), None)
        if first_frame is None:
            raise ProbeError("corrupt", "No frame of the video can be decoded.")
        rotation = first_frame.rotation % 360
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        meta = {
            "duration_s": round(duration, 6),
            "fps": round(fps, 6),
            # Matroska/WebM headers carry no frame count: counting would mean reading every packet.
            "frames": stream.frames or round(duration * fps),
            "frames_estimated": not stream.frames,
            "width": width,
            "height": height,
            "rotation": rotation,
            "codec": stream.codec_context.name,
            "has_audio": bool(container.streams.audio),
        }
    return Probe("video", media_type, meta)


def video_thumbnail(path: Path, probe: Probe, *, max_side: int, limits: ProbeLimits) -> bytes:
    import av

    with (
        corrupt_on((av.FFmpegError, OSError, ValueError), _CORRUPT),
        _open(path, probe.media_type) as container,
    ):
        stream = _video_stream(container, limits)
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        target = start + float(probe.meta["duration_s"]) * _THUMBNAIL_AT
        if stream.time_base:
            # An unseekable stream fails here: then the frames from the start will do.
            with suppress(av.FFmpegError):
                container.seek(round(target / stream.time_base), stream=stream)
        frame = None
        for decoded, frame in enumerate(container.decode(stream)):
            if frame.time is None or frame.time >= target or decoded >= _MAX_FRAMES_AFTER_SEEK:
                break
        if frame is None:
            raise ProbeError("corrupt", "No frame of the video can be decoded.")
        # Scaled by FFmpeg straight from YUV: a 4K frame never becomes a full-size RGB image.
        width, height = fit_within(frame.width, frame.height, max_side)
        image = frame.to_image(width=width, height=height)
        rotation = frame.rotation % 360
    if rotation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[rotation])
    return encode_webp(image)


@contextmanager
def _open(path: Path, media_type: str) -> Iterator[InputContainer]:
    import av

    container = av.open(str(path), format=_DEMUXERS[media_type], options={"protocol_whitelist": "file"})
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: InputContainer, limits: ProbeLimits) -> VideoStream:
    """The first video stream, if FFmpeg can decode it and its frames are not too large."""
    stream = container.streams.video[0]
    if stream.codec_context is None:  # PyAV leaves it unset when FFmpeg knows no such codec
        raise ProbeError("unsupported_type", "The video's codec is not one Loupe can decode.")
    refuse_if_too_many_pixels(stream.codec_context.width, stream.codec_context.height, limits)
    return stream


def _duration_s(container: InputContainer, stream: Stream) -> float:
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / av.time_base


def _probe_sound_track(container: InputContainer, media_type: str) -> Probe:
    stream = container.streams.audio[0]
    if stream.codec_context is None:
        raise ProbeError("unsupported_type", "The audio's codec is not one Loupe can decode.")
    duration = _duration_s(container, stream)
    if duration <= 0 or not stream.codec_context.sample_rate:
        raise ProbeError("corrupt", "The audio stream has no duration or sample rate.")
    meta: dict[str, Any] = {
        "duration_s": round(duration, 6),
        "sample_rate": stream.codec_context.sample_rate,
        "channels": stream.codec_context.layout.nb_channels,
        "format": container.format.name,
        "codec": stream.codec_context.name,
    }
    return Probe("audio", _AUDIO_TYPES.get(media_type, media_type), meta)
