"""The quality benchmark (`python -m bench quality`): its simulation and its arithmetic, and the
whole scenario at a tiny scale, so a change in quality/ or labeling/ that breaks it shows here
rather than on the next benchmark run."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bench import quality as bench
from bench.isolated import no_job_messages
from tests.labeling.conftest import objects_dir  # noqa: F401  (the local object store fixture)


def test_the_bayes_ceiling_is_what_hand_computed_votes_give() -> None:
    assert bench.bayes_ceiling([[1.0, 1.0, 1.0]]) == pytest.approx(1.0)
    # One annotator: their own accuracy. Two of equal accuracy p: both right, or exactly one
    # right and the tie shared, 2 p (1 - p) / 2.
    assert bench.bayes_ceiling([[0.8]]) == pytest.approx(0.8)
    assert bench.bayes_ceiling([[0.8, 0.8]]) == pytest.approx(0.64 + 0.8 * 0.2)
    # Three of equal accuracy p with ten classes: at least two right, or one right while the two
    # wrong ones disagree (8 chances in 9), a three-way tie shared.
    p, q = 0.85, 0.15
    expected = p**3 + 3 * p**2 * q + 3 * p * q**2 * (8 / 9) / 3
    assert bench.bayes_ceiling([[p, p, p]]) == pytest.approx(expected)
    # The mean over tasks.
    assert bench.bayes_ceiling([[0.8], [1.0, 1.0, 1.0]]) == pytest.approx(0.9)


def test_a_simulated_annotator_is_right_as_often_as_configured_and_else_names_another_class() -> None:
    rng = bench._rng("test")
    answers = Counter(bench._answer("3", 0.8, rng) for _ in range(20_000))
    assert answers["3"] / 20_000 == pytest.approx(0.8, abs=0.01)
    wrong = [answers[str(d)] for d in range(10) if d != 3]
    assert min(wrong) > 0.8 * max(wrong)  # a uniformly random other class


def test_goal_ratios_round_down_so_a_missed_goal_never_prints_as_met() -> None:
    assert bench._ratio(0.9683, 0.97) == 0.99
    assert bench._ratio(0.97, 0.97) == 1.0
    assert bench._ratio(5.0, 0.0) == 100.0  # an error of exactly 0 points


@pytest.mark.django_db
def test_the_scenario_runs_end_to_end_at_a_tiny_scale(objects_dir: Any) -> None:  # noqa: F811
    with no_job_messages():
        figures = {
            f.name: f.value
            for f in bench.measure(
                bench.Scale(consensus=10, gold=4, label_digits=120, rule_annotations=100, worker=False)
            )
        }
    for name in (
        "consensus_majority_accuracy",
        "consensus_dawid_skene_accuracy",
        "label_error_precision",
        "label_error_recall",
    ):
        assert 0 <= figures[name] <= 100, name
    assert figures["consensus_tasks"] == 10 and figures["gold_answers_per_annotator"] == 4
    assert figures["gold_scoring_max_abs_error_pts"] == pytest.approx(0.0)  # scored as given
    assert 0 <= figures["gold_accuracy_max_abs_error_pts"] <= 100
    assert figures["label_error_flipped"] == 12 and figures["label_error_tasks"] == 120
    assert figures["rule_check_annotations"] == 100 and figures["rule_checks_per_s"] > 0
    assert figures["rule_check_findings"] > 0
