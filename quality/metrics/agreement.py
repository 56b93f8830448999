"""Chance-corrected agreement: how much more annotators agree than they would by guessing.

Raw agreement flatters a project where one class dominates: two annotators who answer "no
defect" everywhere agree 95% of the time on a line with 5% defects while telling nothing apart.
The coefficients here subtract the agreement expected by chance from the labels' own frequencies:
1 is perfect agreement, 0 is chance level, below 0 is systematic disagreement.

Data comes as a table of units (tasks, or regions matched across annotators) by coders
(annotators) holding category labels, with None (or NaN) where a coder did not label the unit.

Every coefficient is undefined (returned as None rather than a number that looks meaningful)
when there is nothing to compare: fewer than two pairable values, or a single category used
everywhere, where agreement by chance is already perfect and 0/0 is all the formula can say.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np

Level = Literal["nominal", "ordinal", "interval", "ratio"]
LEVELS: tuple[Level, ...] = ("nominal", "ordinal", "interval", "ratio")


def is_missing(value: Any) -> bool:
    """None and NaN stand for "this coder did not label this unit"."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def cohen_kappa(a: Sequence[Hashable | None], b: Sequence[Hashable | None]) -> float | None:
    """Cohen's kappa of two coders over the same units: κ = (p_o - p_e) / (1 - p_e).

    p_o is the share of units given the same label; p_e = Σ_c p_a(c) p_b(c), the agreement two
    coders with these label frequencies would reach by chance. Units either coder left out
    (None/NaN) are dropped. None when no unit is labelled by both or one category is all there is.
    """
    if len(a) != len(b):
        raise ValueError(f"Both coders label the same units: {len(a)} labels against {len(b)}.")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if not is_missing(x) and not is_missing(y)]
    categories = {
        value: index for index, value in enumerate(dict.fromkeys(v for pair in pairs for v in pair))
    }
    if len(categories) < 2:
        return None
    table = np.zeros((len(categories), len(categories)))
    for x, y in pairs:
        table[categories[x], categories[y]] += 1
    table /= len(pairs)
    observed = float(np.trace(table))
    expected = float(table.sum(axis=1) @ table.sum(axis=0))
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(table: Sequence[Sequence[int]] | np.ndarray) -> float | None:
    """Fleiss' kappa from counts: `table[i][j]` = how many raters put unit i in category j.

    Every unit has the same number n ≥ 2 of ratings (not necessarily by the same raters).
    P_i = (Σ_j n_ij² - n) / (n (n - 1)) is the agreement on unit i, P̄ their mean, p_j the share
    of all ratings in category j, P_e = Σ_j p_j², and κ = (P̄ - P_e) / (1 - P_e). None for no
    units or a single category used by everyone.
    """
    counts = np.asarray(table, dtype=float)
    if counts.size == 0:
        return None
    if counts.ndim != 2 or (counts < 0).any() or (counts != np.round(counts)).any():
        raise ValueError("Fleiss' kappa takes a units x categories table of non-negative counts.")
    raters = counts.sum(axis=1)
    if (raters != raters[0]).any() or raters[0] < 2:
        raise ValueError(
            "Fleiss' kappa needs the same number (at least 2) of ratings for every unit; "
            f"got between {int(raters.min())} and {int(raters.max())}."
        )
    n = raters[0]
    shares = counts.sum(axis=0) / counts.sum()
    if np.count_nonzero(shares) < 2:
        return None
    per_unit = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    expected = float((shares**2).sum())
    return (float(per_unit.mean()) - expected) / (1.0 - expected)


def coincidence_matrix(data: Sequence[Sequence[Any]]) -> tuple[list[Any], np.ndarray]:
    """Krippendorff's coincidences: the values seen, and o[c][k] = Σ_u (c-k pairs in u) / (m_u - 1).

    `data` is units x coders; m_u is the number of values in unit u. A unit with fewer than two
    values has no pairs and adds nothing. Values are in first-seen order.
    """
    units = [[v for v in row if not is_missing(v)] for row in data]
    units = [values for values in units if len(values) >= 2]
    index: dict[Any, int] = {}
    for values in units:
        for value in values:
            index.setdefault(value, len(index))
    counts = np.zeros((len(units), len(index)))
    for row, values in enumerate(units):
        for value in values:
            counts[row, index[value]] += 1
    pairable = counts.sum(axis=1)
    scaled = counts / (pairable - 1)[:, None] if len(units) else counts
    # Σ_u n_uc n_uk / (m_u - 1), minus the pairs of a value with itself on the diagonal.
    matrix = scaled.T @ counts - np.diag(scaled.sum(axis=0))
    return list(index), matrix


def krippendorff_alpha(data: Sequence[Sequence[Any]], level: Level = "nominal") -> float | None:
    """Krippendorff's alpha of a units x coders table, missing values allowed.

    alpha = 1 - (n - 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck, from the coincidence matrix o, the value
    totals n_c = Σ_k o_ck and n = Σ n_c (Krippendorff 2011, "Computing Krippendorff's
    Alpha-Reliability"). The difference function δ² follows the level of measurement:

    - nominal: 0 for equal values, else 1 (any hashable labels);
    - ordinal: (Σ_{g between c and k} n_g - (n_c + n_k) / 2)², ranks weighted by how often the
      values in between occur (values must be sortable);
    - interval: (c - k)² (numbers);
    - ratio: ((c - k) / (c + k))² (non-negative numbers).

    None when fewer than two values are pairable or all pairable values are the same.
    """
    values, observed = coincidence_matrix(data)
    return alpha_from_coincidences(values, observed, level)


def alpha_from_coincidences(
    values: list[Any], observed: np.ndarray, level: Level = "nominal"
) -> float | None:
    """Krippendorff's alpha from a coincidence matrix (see `krippendorff_alpha`). Coincidences of
    disjoint sets of units add up, so a job can sum them chunk by chunk and compute alpha once."""
    if level not in LEVELS:
        raise ValueError(f"The level of measurement is one of {', '.join(LEVELS)}, got {level!r}.")
    if level != "nominal":
        order = sorted(range(len(values)), key=lambda i: values[i])
        values = [values[i] for i in order]
        observed = observed[np.ix_(order, order)]
    totals = observed.sum(axis=1)
    n = float(totals.sum())
    if len(values) < 2 or n < 2:
        return None
    delta = _differences(values, totals, level)
    expected = float(totals @ delta @ totals)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * float((observed * delta).sum()) / expected


def _differences(values: list[Any], totals: np.ndarray, level: Level) -> np.ndarray:
    size = len(values)
    if level == "nominal":
        return 1.0 - np.eye(size)
    if level == "ordinal":
        cumulative = np.cumsum(totals)
        low, high = (
            np.minimum.outer(np.arange(size), np.arange(size)),
            np.maximum.outer(np.arange(size), np.arange(size)),
        )
        between = cumulative[high] - cumulative[low] + totals[low]
        return (between - np.add.outer(totals, totals) / 2) ** 2
    try:
        numbers = np.array([float(v) for v in values])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{level.capitalize()} alpha needs numbers, got {values!r}.") from exc
    if level == "interval":
        return np.subtract.outer(numbers, numbers) ** 2
    if (numbers < 0).any():
        raise ValueError("Ratio alpha needs non-negative numbers (a ratio scale has its zero at 0).")
    sums = np.add.outer(numbers, numbers)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(sums > 0, np.subtract.outer(numbers, numbers) / sums, 0.0)
    return ratio**2
