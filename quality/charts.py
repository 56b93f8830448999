"""The QC report as a picture managers can look at: one PNG of four panels (matplotlib, Agg).

1. open findings by rule or detector; 2. open findings by class; 3. per annotator: pass rate,
mean agreement with the others and gold accuracy (bars, 0-100 %); 4. each annotator's running
gold accuracy over their answers, with the project's threshold as a dashed line.

Model evaluations are drawn from their stored metrics: precision/recall curves per class for
detection, the confusion matrix for classification.
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


# --- Model evaluations (quality.evaluation) ------------------------------------------------------

CURVES = 20  # precision/recall curves drawn at most (the classes with the most truth regions)
CONFUSION_CLASSES = 40  # classes a confusion matrix shows at most (the most frequent)


def evaluation_plot_names(metrics: dict[str, Any]) -> list[str]:
    """The plots an evaluation's metrics can be drawn as."""
    names = []
    if (metrics.get("detection") or {}).get("pr_curves", {}).get("precision"):
        names.append("pr_curves")
    if (metrics.get("classification") or {}).get("confusion", {}).get("labels"):
        names.append("confusion_matrix")
    return names


def evaluation_plots(metrics: dict[str, Any], names: list[str] | None = None) -> dict[str, bytes]:
    """The evaluation's plots as PNGs, by name (all of them, or those named)."""
    draw = {"pr_curves": pr_curves_png, "confusion_matrix": confusion_png}
    wanted = evaluation_plot_names(metrics) if names is None else names
    family = {"pr_curves": "detection", "confusion_matrix": "classification"}
    return {name: draw[name](metrics[family[name]]) for name in wanted}


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure: Any) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def pr_curves_png(detection: dict[str, Any]) -> bytes:
    """Precision against recall per class at IoU 0.5 (COCOeval's interpolated precision), the
    classes with the most truth regions first, each labelled with its AP50."""
    curves = detection["pr_curves"]
    recall = curves["recall"]
    per_class = detection.get("per_class", {})
    ranked = sorted(
        (label for label, points in curves["precision"].items() if any(p is not None for p in points)),
        key=lambda label: (-(per_class.get(label, {}).get("truth") or 0), label),
    )
    figure = _figure(8, 6)
    ax = figure.subplots()
    coco = detection.get("coco", {})
    ap50 = coco.get("ap50")
    ap = coco.get("map")
    figure.suptitle(
        "Precision / recall per class at IoU 0.5 — "
        f"AP50 {'—' if ap50 is None else f'{ap50:.3f}'}, mAP@[.5:.95] {'—' if ap is None else f'{ap:.3f}'}"
    )
    for label in ranked[:CURVES]:
        points = [p if p is not None else float("nan") for p in curves["precision"][label]]
        class_ap = per_class.get(label, {}).get("ap50")
        ax.plot(recall, points, label=f"{label} ({'—' if class_ap is None else f'{class_ap:.2f}'})")
    if not ranked:
        ax.text(0.5, 0.5, "no class with truth regions", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    if ranked:
        more = f" (+{len(ranked) - CURVES} more)" if len(ranked) > CURVES else ""
        ax.legend(loc="lower left", fontsize="small", title=f"class (AP50){more}")
    return _png(figure)


def confusion_png(classification: dict[str, Any]) -> bytes:
    """The confusion matrix: rows the true class, columns the model's answer; colour is the share
    of the row (so rare classes read as well as common ones), numbers are counts."""
    import numpy as np

    labels = list(classification["confusion"]["labels"])
    matrix = np.asarray(classification["confusion"]["matrix"], dtype=float)
    if len(labels) > CONFUSION_CLASSES:
        keep = sorted(np.argsort(-(matrix.sum(axis=0) + matrix.sum(axis=1)))[:CONFUSION_CLASSES])
        matrix = matrix[np.ix_(keep, keep)]
        labels = [labels[i] for i in keep]
    side = min(4 + 0.45 * len(labels), 20)
    figure = _figure(side + 1.5, side)
    ax = figure.subplots()
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    accuracy = classification.get("accuracy")
    ax.set_title(
        f"Confusion matrix — accuracy {'—' if accuracy is None else f'{accuracy:.3f}'}, "
        f"macro F1 {classification.get('macro_f1') or 0:.3f}"
    )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("model's answer")
    ax.set_ylabel("true class")
    if len(labels) <= 25:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=color, fontsize=8)
    return _png(figure)
