"""Classification figures from predictions, in numpy (equal to scikit-learn's, tested)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .names import for_markdown


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def classification_figures(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy; per-class precision, recall, F1, support; macro and weighted averages; the
    confusion matrix. Undefined ratios (0/0) count as 0, as scikit-learn does by default.

    Every class is in the per-class table and the confusion matrix. The macro average is over
    the classes present in the data (``y_true``; scikit-learn's ``labels=np.unique(y_true)``),
    and says how many (``macro_avg["classes"]``): a test set that covers only some classes is
    not marked down for the ones it lacks, nor for a class it has none of being predicted."""
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    total = support.sum()
    weights = support / total if total else np.zeros(n)
    present = support > 0 if total else np.ones(n, bool)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "count": int(total),
        "per_class": per_class,
        "macro_avg": {
            "precision": float(precision[present].mean()),
            "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
            "classes": int(present.sum()),
        },
        "weighted_avg": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def class_cells(figures: dict[str, Any], name: str) -> tuple[str, str, str]:
    """Precision, recall and F1 of one class as table cells: a dash where the data has no
    image of the class (recall and F1 are undefined; precision too if it was never
    predicted), so a test set of a few classes does not read as failures on the others."""
    c = figures["per_class"][name]
    column = figures["class_names"].index(name)
    predicted = sum(row[column] for row in figures["confusion_matrix"])
    dash = "\u2013"
    precision = f"{c['precision']:.3f}" if predicted or c["support"] else dash
    if not c["support"]:
        return precision, dash, dash
    return precision, f"{c['recall']:.3f}", f"{c['f1']:.3f}"


def figures_markdown(figures: dict[str, Any], *, confused: int = 3) -> str:
    """The figures as Markdown: the per-class table (as the README shows it), the confusion
    matrix, and the ``confused`` most frequent mistakes, so published tables come from a file
    a command wrote rather than from copying numbers by hand."""
    names = figures["class_names"]
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, c in figures["per_class"].items():
        p, r, f1 = class_cells(figures, name)
        lines.append(f"| {for_markdown(name, None)} | {p} | {r} | {f1} | {c['support']} |")
    lines.append(f"| **accuracy** | | | **{figures['accuracy']:.3f}** | {figures['count']} |")
    for label in ("macro_avg", "weighted_avg"):
        a = figures[label]
        name = label.replace("_", " ")
        if label == "macro_avg" and a.get("classes", len(names)) < len(names):
            name += f" ({a['classes']} of {len(names)} classes)"
        lines.append(
            f"| {name} | {a['precision']:.3f} | {a['recall']:.3f} "
            f"| {a['f1']:.3f} | {figures['count']} |"
        )
    cm = np.array(figures["confusion_matrix"])
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", ""]
    shown = [for_markdown(name, None) for name in names]
    lines.append("| | " + " | ".join(shown) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for i, name in enumerate(shown):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in cm[i]) + " |")
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:confused]
    mistakes = [
        f"{off.flat[k]} {shown[k // len(names)]} called {shown[k % len(names)]}"
        for k in order
        if off.flat[k] > 0
    ]
    if mistakes:
        lines += ["", "Most frequent mistakes: " + ", ".join(mistakes) + "."]
    return "\n".join(lines) + "\n"
