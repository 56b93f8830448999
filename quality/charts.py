"""The QC report as a picture managers can look at: one PNG of four panels (matplotlib, Agg).

1. open findings by rule or detector; 2. open findings by class; 3. per annotator: pass rate,
mean agreement with the others and gold accuracy (bars, 0-100 %); 4. each annotator's running
gold accuracy over their answers, with the project's threshold as a dashed line.
"""

from __future__ import annotations

import io
from typing import Any

TOP = 12  # bars per findings panel; the rest are summed into "other"


def _top(counts: dict[str, int]) -> tuple[list[str], list[int]]:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    head, tail = ranked[:TOP], ranked[TOP:]
    if tail:
        head.append(("other", sum(n for _, n in tail)))
    return [k for k, _ in head], [n for _, n in head]


def report_png(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 8), dpi=100, layout="constrained")
    axes = figure.subplots(2, 2)
    who = f"annotator {report['annotator']}" if report.get("annotator") else f"project {report['project']}"
    pass_rate = report.get("pass_rate")
    figure.suptitle(
        f"Quality report, {who}: {report['annotations']} annotations, "
        f"pass rate {'—' if pass_rate is None else f'{pass_rate:.0%}'}, "
        f"{report['findings']['open']} open findings"
    )
    findings = report["findings"]
    for ax, counts, title in (
        (axes[0][0], findings["by_kind"], "Open findings by rule / detector"),
        (axes[0][1], findings["by_class"], "Open findings by class"),
    ):
        names, values = _top(counts)
        ax.set_title(title)
        if names:
            ax.barh(names[::-1], values[::-1], color="#4c72b0")
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("findings")

    annotators = report["annotators"]
    ax = axes[1][0]
    ax.set_title("Annotators (%)")
    names = [a["username"] for a in annotators]
    series = (
        ("pass rate", "pass_rate", "#55a868"),
        ("agreement", "agreement", "#4c72b0"),
        ("gold accuracy", "gold_accuracy", "#c44e52"),
    )
    width = 0.8 / len(series)
    for offset, (label, key, color) in enumerate(series):
        values = [100 * (a[key] or 0) for a in annotators]
        ax.bar([i + offset * width for i in range(len(names))], values, width, label=label, color=color)
    ax.set_xticks([i + width for i in range(len(names))], names, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize="small")

    ax = axes[1][1]
    ax.set_title("Gold accuracy over answers")
    drawn = False
    for a in annotators:
        points = a.get("gold_series") or []
        if points:
            ax.plot(range(1, len(points) + 1), [100 * p["accuracy"] for p in points], label=a["username"])
            drawn = True
    threshold = report["gold"].get("min_accuracy")
    if threshold is not None:
        ax.axhline(100 * threshold, color="grey", linestyle="--", label="threshold")
    ax.set_ylim(0, 100)
    ax.set_xlabel("gold answers")
    if drawn:
        ax.legend(loc="lower right", fontsize="small")
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
