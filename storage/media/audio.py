"""Audio: duration, sample rate, channels and format, from headers only.

libsndfile (soundfile) reads WAV, FLAC, AIFF, Ogg Vorbis/Opus and MP3 exactly; mutagen reads
what it cannot, AAC in MP4 (.m4a) or raw ADTS. Audio that arrives in a video container (an MP4
with only a sound track) is read by the video probe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.media.base import Probe, ProbeError, corrupt_on

_MUTAGEN_TYPES = {"audio/mp4", "audio/aac"}
_CORRUPT = "The audio file is damaged or truncated and cannot be read."


def probe_audio(path: Path, *, media_type: str) -> Probe:
    import soundfile

    if media_type in _MUTAGEN_TYPES:
        return Probe("audio", media_type, _read_with_mutagen(path))
    try:
        info = soundfile.info(str(path))
    except soundfile.SoundFileError as exc:
        if media_type == "audio/mpeg":
            return Probe("audio", media_type, _read_with_mutagen(path))  # an MP3 libsndfile rejects
        raise ProbeError("corrupt", _CORRUPT) from exc
    if info.samplerate <= 0 or info.channels <= 0 or info.frames <= 0:
        raise ProbeError("corrupt", "The audio file holds no samples.")
    meta = {
        "duration_s": round(info.frames / info.samplerate, 6),
        "sample_rate": int(info.samplerate),
        "channels": int(info.channels),
        "format": str(info.format),
        "codec": str(info.subtype),
    }
    return Probe("audio", media_type, meta)


def _read_with_mutagen(path: Path) -> dict[str, Any]:
    import mutagen

    with corrupt_on((mutagen.MutagenError, OSError, ValueError), _CORRUPT):
        audio = mutagen.File(path)
    if audio is None or not getattr(audio.info, "length", 0) or not getattr(audio.info, "sample_rate", 0):
        raise ProbeError("corrupt", _CORRUPT)
    return {
        "duration_s": round(float(audio.info.length), 6),
        "sample_rate": int(audio.info.sample_rate),
        "channels": int(audio.info.channels),
        "format": type(audio).__name__,  # "MP3", "MP4", "AAC"
        "codec": str(getattr(audio.info, "codec", type(audio).__name__.lower())),
    }
