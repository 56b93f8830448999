"""The built-in audio models on a real recording: Silero speech segments and PocketSphinx English
transcription, every region checked by Loupe's own validator. No network, no database.

The speech is CMU ARCTIC's `arctic_a0007.wav` (speaker awb, 16 kHz, 4.0 s, "And you always want
to see it in the superlative degree."), which pysptk ships as its example audio (a dev dependency:
no package of the audio extra ships a recording). The tests build a recording from it: 1.5 s of
quiet, the sentence, 2 s of quiet, the sentence again, 1 s of quiet, with the quiet a faint noise
at -70 dBFS rather than digital zeros, as in a real room.
"""

from __future__ import annotations

import importlib.util
import io
import os
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from labeling.inference.base import REGISTRY, ModelInput, ModelUnavailable, Predictor
from labeling.inference.builtin import audio as builtin_audio
from labeling.inference.builtin.audio import SAMPLE_RATE, decode_pcm16k
from labeling.regions import ItemFacts, parse_schema, validate_regions

TRANSCRIPT = "and you always want to see it in the superlative degree"
LAYOUT = (1.5, "speech", 2.0, "speech", 1.0)  # seconds of quiet, and where the sentence goes
# Detected segments must match the sentence's extent within this: pad_s (0.1 s) is added on each
# side, Silero decides per 32 ms window, and where a soft onset or a decaying last syllable counts
# as speech is a judgement on which the energy gate below and the model differ by up to ~0.1 s.
TOLERANCE_S = 0.3
# PocketSphinx gets the sentence word for word when it is decoded alone, and one word wrong ("in"
# heard as "and") in one of the two copies inside the longer recording: 1 error in 22 words.
# 0.2 leaves room for one more slip (another FFmpeg resampler or PocketSphinx build) and still
# fails on anything broken, which scores near 1.
MAX_WER = 0.2


def _require(what: str, reason: str) -> None:
    if os.environ.get("LOUPE_TEST_REQUIRE_SERVICES", "") in {"1", "true", "yes", "on"}:
        pytest.fail(f"{what} must be installed for CI: {reason}")
    pytest.skip(reason)


def _loaded(load: Callable[[dict[str, Any]], Predictor], params: dict[str, Any] | None = None) -> Any:
    try:
        return load(params or {})
    except ModelUnavailable as exc:
        _require("the audio extra", str(exc))


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    """The ARCTIC sentence as 16 kHz int16 samples, decoded from its WAV file."""
    spec = importlib.util.find_spec("pysptk")  # found, not imported: only its data file is needed
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    path = Path(locations[0], "example_audio_data", "arctic_a0007.wav") if locations else None
    if path is None or not path.is_file():
        _require("pysptk (loupe[dev])", "pysptk, whose example audio these tests use, is not installed")
    assert path is not None
    return decode_pcm16k(path.read_bytes())


def speech_extent(samples: np.ndarray) -> tuple[float, float]:
    """First and last 10 ms of the recording louder than -35 dBFS: the sentence's extent, measured
    without any speech model (its quiet lead-in and tail sit at -45 to -55 dBFS)."""
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160).astype(np.float64)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > 32768 * 10 ** (-35 / 20))
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


@pytest.fixture(scope="module")
def recording(sentence: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The quiet-speech-quiet-speech-quiet recording and the sentence's extent in each copy."""
    noise = np.random.default_rng(7)
    first, last = speech_extent(sentence)
    parts: list[np.ndarray] = []
    expected: list[tuple[float, float]] = []
    offset = 0.0
    for part in LAYOUT:
        if part == "speech":
            parts.append(sentence)
            expected.append((offset + first, offset + last))
            offset += len(sentence) / SAMPLE_RATE
        else:
            assert isinstance(part, float)
            parts.append(noise.normal(0, 10, round(part * SAMPLE_RATE)).astype(np.int16))
            offset += part
    return np.concatenate(parts), expected


@pytest.fixture(scope="module")
def vad() -> builtin_audio.SileroSpeech:
    model: builtin_audio.SileroSpeech = _loaded(builtin_audio.load_silero_vad)
    return model


@pytest.fixture(scope="module")
def asr() -> builtin_audio.PocketsphinxEnglish:
    model: builtin_audio.PocketsphinxEnglish = _loaded(builtin_audio.load_pocketsphinx_en)
    return model


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def encoded(samples: np.ndarray, container: str, codec: str, rate: int, layout: str) -> bytes:
    """16 kHz mono samples written by FFmpeg in another format, rate and channel layout."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream: Any = output.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue()


def audio_item(data: bytes, duration: float, *, key: str = "a1", media_type: str = "audio/wav") -> ModelInput:
    return ModelInput(
        key=key, modality="audio", media_type=media_type, meta={"duration_s": duration}, read=lambda: data
    )


def assert_valid(regions: list[dict[str, Any]], duration: float) -> None:
    """The regions pass Loupe's validator on a schema with a class per label they use."""
    classes = [
        {"name": label, "color": "#663399", "tools": [tool]}
        for label, tool in sorted({(region["label"], region["type"]) for region in regions})
    ]
    spec = {"classes": classes or [{"name": "unused", "color": "#663399", "tools": ["time_segment"]}]}
    facts = ItemFacts.from_item("audio", {"duration_s": duration})
    validate_regions(regions, parse_schema(spec), facts, prediction=True)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance (substitutions, insertions, deletions) over the reference length."""
    ref, hyp = reference.split(), hypothesis.split()
    previous = list(range(len(hyp) + 1))
    for position, word in enumerate(ref, start=1):
        current = [position]
        for column, heard in enumerate(hyp, start=1):
            current.append(
                min(previous[column] + 1, current[column - 1] + 1, previous[column - 1] + (word != heard))
            )
        previous = current
    return previous[-1] / len(ref)


# -- decoding ------------------------------------------------------------------------------------


def test_wer_counts_substitutions_insertions_and_deletions() -> None:
    assert word_error_rate("a b c d", "a b c d") == 0
    assert word_error_rate("a b c d", "a x c d") == 0.25
    assert word_error_rate("a b c d", "a b c d e") == 0.25
    assert word_error_rate("a b c d", "b c") == 0.5


@pytest.mark.parametrize(
    ("container", "codec", "rate", "layout"),
    [
        ("flac", "flac", 44_100, "stereo"),
        ("mp3", "libmp3lame", 44_100, "stereo"),
        ("ogg", "libopus", 48_000, "stereo"),
        ("ipod", "aac", 22_050, "mono"),
        ("wav", "pcm_s16le", 8_000, "mono"),
    ],
)
def test_any_format_rate_and_layout_decodes_to_16_khz_mono(
    sentence: np.ndarray, container: str, codec: str, rate: int, layout: str
) -> None:
    samples = decode_pcm16k(encoded(sentence, container, codec, rate, layout))

    assert samples.dtype == np.int16 and samples.ndim == 1
    # AAC adds its encoder's priming frame (1024 samples at 22.05 kHz, 46 ms) to the stream.
    assert abs(len(samples) / SAMPLE_RATE - len(sentence) / SAMPLE_RATE) < 0.1
    # The sentence's extent survives the trip (lossy codecs and 8 kHz smear its edges a little).
    original, decoded = speech_extent(sentence), speech_extent(samples)
    assert abs(original[0] - decoded[0]) < 0.1 and abs(original[1] - decoded[1]) < 0.1


def test_audio_longer_than_max_seconds_is_refused(sentence: np.ndarray) -> None:
    data = wav_bytes(sentence)

    with pytest.raises(builtin_audio.PredictionFailed, match="max_seconds"):
        decode_pcm16k(data, max_seconds=3.0)
    assert len(decode_pcm16k(data, max_seconds=5.0)) == len(sentence)


def test_bytes_that_are_not_audio_are_refused() -> None:
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="PNG")

    with pytest.raises(builtin_audio.PredictionFailed, match="no audio stream"):
        decode_pcm16k(image.getvalue())
    with pytest.raises(builtin_audio.PredictionFailed, match="could not be decoded"):
        decode_pcm16k(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file at all")


# -- speech segments -----------------------------------------------------------------------------


def test_vad_finds_each_sentence_where_it_is_spoken(
    vad: Any, recording: tuple[np.ndarray, list[tuple[float, float]]]
) -> None:
    samples, expected = recording
    duration = len(samples) / SAMPLE_RATE

    [output] = vad.predict([audio_item(wav_bytes(samples), duration)])

    assert output.error is None
    found = [(region["geometry"]["start"], region["geometry"]["end"]) for region in output.regions]
    assert len(found) == len(expected), found
    for (start, end), (speech_start, speech_end) in zip(found, expected, strict=True):
        assert abs(start - speech_start) <= TOLERANCE_S, (start, speech_start)
        assert abs(end - speech_end) <= TOLERANCE_S, (end, speech_end)
    assert all(region["label"] == "speech" and region["score"] > 0.9 for region in output.regions)
    assert_valid(output.regions, duration)


def test_vad_reads_a_compressed_stereo_file_at_another_rate(
    vad: Any, recording: tuple[np.ndarray, list[tuple[float, float]]]
) -> None:
    samples, expected = recording
    data = encoded(samples, "mp3", "libmp3lame", 44_100, "stereo")

    [output] = vad.predict([audio_item(data, len(samples) / SAMPLE_RATE, media_type="audio/mpeg")])

    found = [(region["geometry"]["start"], region["geometry"]["end"]) for region in output.regions]
    assert len(found) == len(expected)
    for (start, end), (speech_start, speech_end) in zip(found, expected, strict=True):
        assert abs(start - speech_start) <= TOLERANCE_S and abs(end - speech_end) <= TOLERANCE_S


def test_vad_finds_nothing_in_quiet(vad: Any) -> None:
    quiet = np.random.default_rng(3).normal(0, 10, 3 * SAMPLE_RATE).astype(np.int16)

    [output] = vad.predict([audio_item(wav_bytes(quiet), 3.0)])

    assert output.regions == [] and output.error is None


def test_speech_cut_off_at_the_end_stays_inside_the_probed_duration(vad: Any, sentence: np.ndarray) -> None:
    cut = sentence[: round(2.5 * SAMPLE_RATE)]  # mid-sentence: speech runs to the last sample
    probed = 2.3  # shorter than what decodes, as when a header understates the length

    [output] = vad.predict([audio_item(wav_bytes(cut), probed)])

    [region] = output.regions
    assert 2.2 <= region["geometry"]["end"] <= probed
    assert_valid(output.regions, probed)


def test_speech_segments_need_a_long_enough_pause_to_end_and_padding_never_overlaps() -> None:
    window = builtin_audio.VAD_WINDOW_S
    probabilities = np.array(
        [0.0] * 10
        + [0.9] * 20
        + [0.4] * 3
        + [0.9] * 20
        + [0.1] * 4
        + [0.9] * 20
        + [0.1] * 10
        + [0.95] * 5
        + [0.0] * 10
    )
    duration = len(probabilities) * window

    segments = builtin_audio.speech_segments(
        probabilities, duration=duration, threshold=0.5, min_speech_s=0.25, min_silence_s=0.3, pad_s=0.1
    )

    # 0.4 lies between threshold - 0.15 and threshold: a soft syllable, not a pause. Four windows
    # (128 ms) of 0.1 are a pause too short to end speech; ten (320 ms) end it. The speech after
    # them, five windows (160 ms), is shorter than min_speech_s and dropped.
    assert [(segment.first, segment.last) for segment in segments] == [(10, 77)]
    assert segments[0].start == round(10 * window - 0.1, 3)
    assert segments[0].end == pytest.approx(77 * window + 0.1, abs=0.001)

    close = np.array([0.0] * 5 + [0.9] * 20 + [0.0] * 12 + [0.9] * 20 + [0.0] * 5)
    first, second = builtin_audio.speech_segments(
        close, duration=len(close) * window, threshold=0.5, min_speech_s=0.25, min_silence_s=0.3, pad_s=0.5
    )
    assert first.end <= second.start  # each takes at most half of the 0.384 s gap
    assert first.start == 0.0 and second.end <= len(close) * window


# -- transcription -------------------------------------------------------------------------------


def test_asr_transcribes_the_sentence(asr: Any, sentence: np.ndarray) -> None:
    duration = len(sentence) / SAMPLE_RATE

    [output] = asr.predict([audio_item(wav_bytes(sentence), duration)])

    utterances = [region for region in output.regions if region["label"] == "utterance"]
    heard = " ".join(region["geometry"]["text"] for region in utterances)
    assert word_error_rate(TRANSCRIPT, heard) <= MAX_WER, heard
    assert_valid(output.regions, duration)


def test_asr_times_utterances_and_words_inside_the_speech(
    asr: Any, recording: tuple[np.ndarray, list[tuple[float, float]]]
) -> None:
    samples, expected = recording
    duration = len(samples) / SAMPLE_RATE
    started = time.perf_counter()

    [output] = asr.predict([audio_item(wav_bytes(samples), duration)])

    elapsed = time.perf_counter() - started
    utterances = [region for region in output.regions if region["label"] == "utterance"]
    assert len(utterances) == 2
    heard = " ".join(region["geometry"]["text"] for region in utterances)
    assert word_error_rate(f"{TRANSCRIPT} {TRANSCRIPT}", heard) <= MAX_WER, heard
    for utterance, (speech_start, speech_end) in zip(utterances, expected, strict=True):
        span = utterance["geometry"]
        assert (
            speech_start - 0.5 <= span["start"] <= speech_start
            and speech_end <= span["end"] <= speech_end + 0.5
        )
        index = output.regions.index(utterance)
        words = output.regions[index + 1 : index + 1 + len(span["text"].split())]
        assert [word["label"] for word in words] == ["word"] * len(words)
        assert " ".join(word["geometry"]["text"] for word in words) == span["text"]
        times = [(word["geometry"]["start"], word["geometry"]["end"]) for word in words]
        assert times == sorted(times) and all(start < end for start, end in times)
        assert span["start"] <= times[0][0] and times[-1][1] <= span["end"]
        # The first word starts when the sentence does; "degree" ends with it.
        assert (
            abs(times[0][0] - speech_start) <= TOLERANCE_S and abs(times[-1][1] - speech_end) <= TOLERANCE_S
        )
    assert all(0 <= region["score"] <= 1 for region in output.regions)
    assert [region["id"] for region in output.regions] == [f"p{n}" for n in range(1, len(output.regions) + 1)]
    assert_valid(output.regions, duration)
    assert elapsed < duration * 2  # about 0.15 x real time here; generous for a busy machine


def test_asr_without_words_gives_only_utterances(sentence: np.ndarray) -> None:
    model = _loaded(builtin_audio.load_pocketsphinx_en, {"words": False})

    [output] = model.predict([audio_item(wav_bytes(sentence), len(sentence) / SAMPLE_RATE)])

    assert [region["label"] for region in output.regions] == ["utterance"]


def test_an_undecodable_item_fails_alone(vad: Any, sentence: np.ndarray) -> None:
    text = ModelInput(key="t", modality="text", media_type="text/plain", meta={}, read=lambda: b"hello")
    batch = [audio_item(b"not audio", 1.0, key="bad"), text, audio_item(wav_bytes(sentence), 4.0, key="good")]

    outputs = vad.predict(batch)

    assert outputs[0].error is not None and outputs[1].error is not None
    assert outputs[2].error is None and len(outputs[2].regions) == 1


def test_the_registry_describes_both_models() -> None:
    vad_entry, asr_entry = REGISTRY["silero-vad"], REGISTRY["pocketsphinx-en"]

    assert (vad_entry.task_type, vad_entry.outputs, vad_entry.labels, vad_entry.extra) == (
        "segmentation",
        ("time_segment",),
        ("speech",),
        "audio",
    )
    assert (asr_entry.task_type, asr_entry.outputs, asr_entry.labels, asr_entry.extra) == (
        "transcription",
        ("transcription",),
        ("utterance", "word"),
        "audio",
    )
    assert vad_entry.params["max_seconds"] == 4 * 3600


def test_bad_parameters_are_refused_when_loading() -> None:
    with pytest.raises(ValueError, match="parameter threshold "):
        builtin_audio.load_silero_vad({"threshold": 1.5})
    with pytest.raises(ValueError, match="parameter words "):
        builtin_audio.load_pocketsphinx_en({"words": "yes"})


def test_a_long_speech_segment_is_cut_into_utterances_at_its_quietest_windows() -> None:
    window = builtin_audio.VAD_WINDOW_S
    probabilities = np.full(round(70 / window), 0.95)
    dips = [round(22 / window), round(47 / window)]  # short breaths in a 70 s monologue
    probabilities[dips] = 0.6
    [segment] = builtin_audio.speech_segments(
        probabilities, duration=70.0, threshold=0.5, min_speech_s=0.25, min_silence_s=0.3, pad_s=0.0
    )

    utterances = builtin_audio.split_utterances([segment], probabilities, 30.0)

    assert [(round(start, 1), round(end, 1)) for start, end in utterances] == [(0, 22), (22, 47), (47, 70)]
