"""Chance-corrected agreement against published examples and scikit-learn (pure functions)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score

from quality.metrics.agreement import (
    alpha_from_coincidences,
    cohen_kappa,
    coincidence_matrix,
    fleiss_kappa,
    krippendorff_alpha,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the example with missing data: four
# observers, twelve units, "." where an observer gave no value. Rows here are observers.
NA = None
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NA, NA, NA],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NA, 3],
    [NA, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NA],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NA],
]
UNITS = [list(unit) for unit in zip(*KRIPPENDORFF_2011, strict=True)]  # units x coders

# Fleiss (1971), Table 1: 30 patients, 6 psychiatrists each, 5 diagnoses (depression,
# personality disorder, schizophrenia, neurosis, other), one row of diagnoses per patient (the
# layout of R's irr::diagnoses).
FLEISS_1971 = [
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5], [2, 2, 2, 4, 4, 4],
    [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4], [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5],
    [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4], [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5],
    [3, 3, 3, 3, 3, 5], [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4], [1, 4, 4, 4, 4, 5],
    [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4], [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5],
]  # fmt: skip

# Wikipedia's "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories, as counts.
WIKIPEDIA_FLEISS = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]  # fmt: skip


def counts(rows: list[list[Any]], categories: list[Any]) -> list[list[int]]:
    return [[row.count(c) for c in categories] for row in rows]


@pytest.mark.parametrize(
    ("level", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)]
)
def test_alpha_reproduces_krippendorffs_worked_example(level: str, published: float) -> None:
    alpha = krippendorff_alpha(UNITS, level)  # type: ignore[arg-type]
    assert alpha == pytest.approx(published, abs=5e-4)


def test_alpha_follows_the_coincidence_matrix_of_the_paper() -> None:
    # The paper's coincidences: o_11 = 7, o_12 = 4/3, value totals n_c = 9, 13, 10, 5, 3 (n = 40)
    # and 8 mismatching coincidences, so nominal alpha = 1 - 39 · 8 / (40² - Σ n_c²)
    # = 1 - 312 / 1216 = 113/152; interval alpha comes out at 951/1120.
    values, matrix = coincidence_matrix(UNITS)
    assert values == [1, 2, 3, 4, 5]
    assert matrix.sum(axis=1).tolist() == pytest.approx([9, 13, 10, 5, 3])
    assert (matrix[0, 0], matrix[0, 1], matrix.sum() - np.trace(matrix)) == pytest.approx((7, 4 / 3, 8))
    assert krippendorff_alpha(UNITS) == pytest.approx(113 / 152, abs=1e-12)
    assert krippendorff_alpha(UNITS, "interval") == pytest.approx(951 / 1120, abs=1e-12)


def test_a_unit_with_a_single_value_changes_nothing() -> None:
    # Unit 12 has one value; the 2019 edition of the example leaves it out with the same alpha.
    for level in ("nominal", "ordinal", "interval", "ratio"):
        assert krippendorff_alpha(UNITS[:11], level) == krippendorff_alpha(UNITS, level)  # type: ignore[arg-type]


def test_fleiss_kappa_reproduces_fleiss_1971() -> None:
    table = counts(FLEISS_1971, [1, 2, 3, 4, 5])
    assert np.array(table).sum(axis=0).tolist() == [26, 26, 30, 55, 43]  # the paper's totals
    assert fleiss_kappa(table) == pytest.approx(0.4302445, abs=1e-7)  # R irr::kappam.fleiss: 0.430


def test_fleiss_kappa_reproduces_the_wikipedia_example() -> None:
    # P̄ = 0.378, P_e = 0.213 → κ = 0.210 (this 10 x 14 table is not the 0.430 of Fleiss 1971).
    assert fleiss_kappa(WIKIPEDIA_FLEISS) == pytest.approx(0.210, abs=5e-4)


def test_alpha_and_fleiss_agree_on_complete_data_up_to_the_small_sample_term() -> None:
    # With every coder on every unit, nominal alpha = 1 - (1 - κ) (N n - 1) / (N n).
    kappa = fleiss_kappa(counts(FLEISS_1971, [1, 2, 3, 4, 5]))
    assert kappa is not None
    assert krippendorff_alpha(FLEISS_1971) == pytest.approx(1 - (1 - kappa) * 179 / 180)


def test_cohen_kappa_matches_a_hand_computed_table() -> None:
    # 50 units: yes/yes 20, yes/no 5, no/yes 10, no/no 15 → p_o = 0.7, p_e = 0.5·0.6 + 0.5·0.4
    # = 0.5, κ = 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_matches_scikit_learn_on_seeded_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 300)
    b = np.where(rng.random(300) < 0.6, a, rng.integers(0, 4, 300))
    assert cohen_kappa(a.tolist(), b.tolist()) == pytest.approx(cohen_kappa_score(a, b))


def test_cohen_kappa_drops_units_either_coder_left_out() -> None:
    a: list[Any] = ["x", "y", None, "x", float("nan"), "y"]
    b: list[Any] = ["x", "x", "y", "x", "y", None]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(["x", "y", "x"], ["x", "x", "x"]))
    with pytest.raises(ValueError, match="same units"):
        cohen_kappa(["x"], ["x", "y"])


def test_nothing_to_compare_is_none_not_a_number() -> None:
    # One category everywhere: chance agreement is already perfect and every coefficient is 0/0.
    assert cohen_kappa(["cat"] * 5, ["cat"] * 5) is None
    assert fleiss_kappa([[3, 0], [3, 0]]) is None
    assert krippendorff_alpha([["cat", "cat"], ["cat", "cat", None]]) is None
    # Fewer than two pairable values.
    assert cohen_kappa([None, "cat"], ["dog", None]) is None
    assert cohen_kappa([], []) is None
    assert fleiss_kappa(np.zeros((0, 3))) is None
    assert krippendorff_alpha([["cat", None], [None, "dog"]]) is None
    assert krippendorff_alpha([]) is None


def test_bad_input_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 1], [1, 1]])
    with pytest.raises(ValueError, match="non-negative counts"):
        fleiss_kappa([[2, -1], [1, 0]])
    with pytest.raises(ValueError, match="level of measurement"):
        krippendorff_alpha(UNITS, "cardinal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs numbers"):
        krippendorff_alpha([["a", "b"], ["b", "a"]], "interval")
    with pytest.raises(ValueError, match="non-negative"):
        krippendorff_alpha([[-1, 1], [1, 1]], "ratio")


def test_ordinal_alpha_cares_how_far_apart_the_ranks_are() -> None:
    near = [["low", "mid"], ["mid", "mid"], ["high", "high"], ["low", "low"]]
    far = [["low", "high"], ["mid", "mid"], ["high", "high"], ["low", "low"]]
    rank = {"low": 0, "mid": 1, "high": 2}
    as_ranks = [[rank[v] for v in unit] for unit in near]
    near_alpha = krippendorff_alpha(as_ranks, "ordinal")
    far_alpha = krippendorff_alpha([[rank[v] for v in unit] for unit in far], "ordinal")
    assert near_alpha is not None and far_alpha is not None
    assert near_alpha > far_alpha
    # Nominal alpha does not see the difference.
    assert krippendorff_alpha(near) == krippendorff_alpha(far)


labels = st.sampled_from(["a", "b", "c"])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(labels, labels), min_size=1, max_size=40))
def test_cohen_kappa_is_sklearns_and_between_minus_one_and_one(pairs: list[tuple[str, str]]) -> None:
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    kappa = cohen_kappa(a, b)
    if len(set(a) | set(b)) < 2:
        assert kappa is None
        return
    assert kappa is not None
    assert -1.0 <= kappa <= 1.0
    assert kappa == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=2, max_size=15),
    st.integers(2, 5),
    st.lists(st.booleans(), min_size=75, max_size=75),
)
def test_alpha_is_one_when_every_coder_agrees(truth: list[int], coders: int, present: list[bool]) -> None:
    assume(len(set(truth)) >= 2)
    # Every unit keeps at least two values; the others may be missing.
    table = [
        [value if j < 2 or present[(i * coders + j) % 75] else None for j in range(coders)]
        for i, value in enumerate(truth)
    ]
    for level in ("nominal", "ordinal", "interval", "ratio"):
        assert krippendorff_alpha(table, level) == pytest.approx(1.0)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(2, 6), st.data())
def test_nominal_alpha_and_fleiss_kappa_tell_the_same_story(units: int, raters: int, data: Any) -> None:
    rows = [data.draw(st.lists(labels, min_size=raters, max_size=raters)) for _ in range(units)]
    kappa = fleiss_kappa(counts(rows, ["a", "b", "c"]))
    alpha = krippendorff_alpha(rows)
    if kappa is None:
        assert alpha is None
        return
    assert alpha is not None
    total = units * raters
    assert alpha == pytest.approx(1 - (1 - kappa) * (total - 1) / total, abs=1e-9)
    assert kappa <= 1.0 + 1e-12
    assert not math.isnan(alpha)


def test_alpha_from_coincidences_summed_over_parts_equals_alpha_of_the_whole() -> None:
    rng = np.random.default_rng(5)
    data = [[None if rng.random() < 0.2 else int(rng.integers(0, 4)) for _ in range(30)] for _ in range(4)]
    units = [list(column) for column in zip(*data, strict=True)]
    total: dict[tuple[Any, Any], float] = {}
    for part in (units[:10], units[10:]):
        values, matrix = coincidence_matrix(part)
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                total[(c, k)] = total.get((c, k), 0.0) + float(matrix[i, j])
    values = sorted({c for c, _ in total})
    summed = np.array([[total.get((c, k), 0.0) for k in values] for c in values])
    assert alpha_from_coincidences(values, summed) == pytest.approx(krippendorff_alpha(units))
