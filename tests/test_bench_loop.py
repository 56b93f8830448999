"""The model-loop benchmark (`python -m bench loop`): its texts, its arithmetic, and a tiny loop run
in the test database. Whether the loop meets its goal is the benchmark's to show, not a test's;
the isolated world it runs in is exercised through the export scenario's test."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import loop as bench
from bench.isolated import no_job_messages
from tests.labeling.conftest import objects_dir  # noqa: F401  (the local object store fixture)


def test_the_texts_are_distinct_balanced_and_the_same_every_run() -> None:
    corpus = bench.texts(400)
    assert len({text for text, _ in corpus}) == 400
    assert set(Counter(topic for _, topic in corpus).values()) == {50}  # 8 topics in turn
    assert corpus == bench.texts(400)
    for text, topic in corpus:
        # The first clause always opens with a subject of the text's own topic.
        assert any(text.startswith(subject + " ") for subject in bench.TOPICS[topic][1]), (text, topic)
    # Siblings share words: a text's vocabulary alone does not give its topic away.
    assert any(topic == "tennis" and "match" in text for text, topic in corpus)
    assert any(topic == "football" and "match" in text for text, topic in corpus)


def test_time_saved_is_two_thirds_of_the_accuracy_and_goal_ratios_round_down() -> None:
    # 100 texts, 60 right predictions confirmed in 1 unit, 40 fixed in 3: 180 of 300 units.
    assert bench.saved_pct(60 * 1 + 40 * 3, 100) == pytest.approx(40.0)
    assert bench.saved_pct(300, 100) == 0.0
    assert bench._ratio(29.99, 30.0) == 0.99  # a missed goal never prints as met
    assert bench._ratio(30.0, 30.0) == 1.0


@pytest.mark.django_db
def test_a_tiny_loop_runs_every_step_and_its_figures_agree(objects_dir: Any, tmp_path: Path) -> None:  # noqa: F811
    with no_job_messages():
        figures = {f.name: f.value for f in bench.measure(bench.Scale(batches=(40, 16, 16, 24)), tmp_path)}
    assert figures["loop_round0_units"] == 3 * 40  # no model: every text costs 3 units
    for n, size in ((1, 16), (2, 16), (3, 24)):
        accuracy = figures[f"loop_round{n}_accuracy"] / 100
        # Right predictions were confirmed (1 unit), wrong ones fixed (3): recorded by Loupe.
        assert figures[f"loop_round{n}_units"] == pytest.approx(size * (3 - 2 * accuracy))
        assert figures[f"loop_round{n}_saved_pct"] == pytest.approx(100 * 2 * accuracy / 3)
        assert 0 <= figures.get(f"loop_round{n}_heldout_accuracy", 0) <= 100  # none: an empty test split
        assert figures[f"loop_round{n}_machine_s"] > 0
    # Each model learns from the train and val splits of everything labeled before its round.
    trained = [figures[f"loop_round{n}_trained_on"] for n in (1, 2, 3)]
    assert trained[0] < trained[1] < trained[2] < 40 + 16 + 16
    assert figures["loop_time_saved_pct"] == figures["loop_round3_saved_pct"]
    assert figures["loop_round3_accuracy"] > 100 / 8  # better than a guess among 8 topics
