"""Evaluation of a bundle through the runtime, and a self-contained HTML report.

Works without TensorFlow: decoding, the model and Grad-CAM all come from the runtime.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scenecam_edge import SceneCam
from scenecam_edge.cam import softmax
from scenecam_edge.faithfulness import Faithfulness, evaluate_maps, random_map
from scenecam_edge.fileio import write_bytes_atomic, write_json_atomic
from scenecam_edge.training.data import LabelledImages, batches
from scenecam_edge.training.metrics import classification_figures, figures_markdown


@dataclass
class Evaluation:
    figures: dict[str, Any]
    predictions: np.ndarray  # (N,) class indices
    confidences: np.ndarray  # (N,) probability of the predicted class


def evaluate(cam: SceneCam, data: LabelledImages, batch_size: int = 64) -> Evaluation:
    """Run ``data`` (model-sized uint8 images) through the bundle and compute the figures."""
    if list(cam.class_names) != list(data.class_names):
        raise ValueError(
            f"the model's classes {list(cam.class_names)} differ from the data's {data.class_names}"
        )
    preds, confs = [], []
    for s in batches(len(data), batch_size):
        probs = softmax(cam.forward(data.images[s])[1].astype(np.float64))
        preds.append(probs.argmax(axis=1))
        confs.append(probs.max(axis=1))
    predictions = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    confidences = np.concatenate(confs) if confs else np.zeros(0)
    figures = classification_figures(data.labels, predictions, data.class_names)
    return Evaluation(figures, predictions, confidences)


def write_report(
    out_dir: str | os.PathLike[str],
    cam: SceneCam,
    data: LabelledImages,
    result: Evaluation,
    *,
    title: str,
    gallery_per_class: int = 6,
    faithfulness: dict[str, Faithfulness] | None = None,
) -> Path:
    """Write ``metrics.json``, ``metrics.md`` (the tables in Markdown) and ``report.html``
    (confusion matrix, per-class figures, and a Grad-CAM gallery per class with the
    misclassifications first)."""
    out = Path(out_dir)
    metrics: dict[str, Any] = {"title": title, **result.figures}
    if faithfulness:
        metrics["faithfulness"] = faithfulness_rows(faithfulness)
    write_json_atomic(out / "metrics.json", metrics)
    write_bytes_atomic(
        out / "metrics.md", f"# {title}\n\n{figures_markdown(result.figures)}".encode()
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        _summary(result.figures),
        _confusion(result.figures),
        _per_class(result.figures),
        faithfulness_html(faithfulness) if faithfulness else "",
        _gallery(cam, data, result, gallery_per_class),
    ]
    page = _PAGE.format(title=html.escape(title), body="\n".join(sections))
    return write_bytes_atomic(out / "report.html", page.encode("utf-8"))


def _summary(f: dict[str, Any]) -> str:
    m, w = f["macro_avg"], f["weighted_avg"]
    return (
        f"<p class=big>Accuracy <b>{f['accuracy']:.2%}</b> on {f['count']} images &middot; "
        f"macro F1 {m['f1']:.3f} &middot; weighted F1 {w['f1']:.3f}</p>"
    )


def _confusion(f: dict[str, Any]) -> str:
    names = f["class_names"]
    cm = np.array(f["confusion_matrix"])
    rows = []
    for i, name in enumerate(names):
        total = max(1, int(cm[i].sum()))
        cells = []
        for j in range(len(names)):
            share = cm[i, j] / total
            hue = 140 if i == j else 0  # green on the diagonal, red off it
            light = 100 - 55 * share
            style = f"background:hsl({hue},70%,{light:.0f}%)"
            cells.append(
                f'<td style="{style}" title="{share:.1%} of {html.escape(name)}">{cm[i, j]}</td>'
            )
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    return (
        "<h2>Confusion matrix</h2><p>Rows: true class; columns: predicted. Shade: share of the row.</p>"
        f"<table class=cm><tr><th></th>{head}</tr>{''.join(rows)}</table>"
    )


def _per_class(f: dict[str, Any]) -> str:
    rows = [
        f"<tr><th>{html.escape(n)}</th><td>{c['precision']:.3f}</td><td>{c['recall']:.3f}</td>"
        f"<td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>"
        for n, c in f["per_class"].items()
    ]
    for label in ("macro_avg", "weighted_avg"):
        a = f[label]
        rows.append(
            f"<tr class=avg><th>{label.replace('_', ' ')}</th><td>{a['precision']:.3f}</td>"
            f"<td>{a['recall']:.3f}</td><td>{a['f1']:.3f}</td><td>{f['count']}</td></tr>"
        )
    return (
        "<h2>Per class</h2><table><tr><th></th><th>precision</th><th>recall</th><th>F1</th>"
        f"<th>support</th></tr>{''.join(rows)}</table>"
    )


def _gallery(cam: SceneCam, data: LabelledImages, result: Evaluation, per_class: int) -> str:
    if per_class <= 0:
        return ""
    options = cam.explain_options()
    parts = [
        "<h2>Grad-CAM gallery</h2><p>Per true class: misclassified first (most confident mistakes first), then correct.</p>"
    ]
    for c, name in enumerate(data.class_names):
        members = np.flatnonzero(data.labels == c)
        wrong = members[result.predictions[members] != c]
        right = members[result.predictions[members] == c]
        wrong = wrong[np.argsort(-result.confidences[wrong])]
        right = right[np.argsort(-result.confidences[right])]
        chosen = np.concatenate([wrong, right])[:per_class]
        if not len(chosen):
            continue
        explained = cam.predict(
            [data.images[i] for i in chosen], [data.sources[i] for i in chosen], explain=options
        )
        cards = []
        for i, e in zip(chosen, explained, strict=True):
            ok = e.index == c
            caption = (
                f"{'&#10003;' if ok else '&#10007;'} {html.escape(e.label)} {e.confidence:.0%}"
            )
            cards.append(
                f'<figure class="{"ok" if ok else "bad"}"><img src="data:image/jpeg;base64,{_jpeg(e.overlay)}" '
                f'alt="{html.escape(Path(data.sources[i]).name)}"><figcaption>{caption}<br>'
                f"<small>{html.escape(Path(data.sources[i]).name)}</small></figcaption></figure>"
            )
        parts.append(
            f"<h3>{html.escape(name)} ({len(wrong)} misclassified)</h3><div class=row>{''.join(cards)}</div>"
        )
    return "\n".join(parts)


def _jpeg(rgb: np.ndarray) -> str:
    data = io.BytesIO()
    Image.fromarray(rgb).save(data, "JPEG", quality=85)
    return base64.b64encode(data.getvalue()).decode("ascii")


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ padding: .35em .7em; border: 1px solid #ddd; text-align: right; }}
th {{ background: #f6f6f6; }}
table.cm td {{ min-width: 3.5em; text-align: center; font-weight: 600; }}
tr.avg th, tr.avg td {{ background: #fafafa; font-style: italic; }}
.big {{ font-size: 1.25em; }}
.row {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; width: 160px; font-size: .85em; text-align: center; }}
figure img {{ width: 150px; height: 150px; border: 4px solid; }}
figure.ok img {{ border-color: #3a3; }} figure.bad img {{ border-color: #d33; }}
</style></head><body>
{body}
</body></html>
"""


RANDOM_BASELINE = "random map (baseline)"


def faithfulness_table(
    cam: SceneCam,
    data: LabelledImages,
    methods: list[str],
    images: int = 100,
    steps: int = 16,
    seed: int = 0,
    max_channels: int = 64,
) -> dict[str, Faithfulness]:
    """Deletion/insertion AUC, average drop and increase in confidence per method, on up to
    ``images`` images of ``data`` (a fixed random subset), explaining each prediction; plus a
    random-map baseline row."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(data))[:images])
    batch = [data.images[i] for i in chosen]
    names = [data.sources[i] for i in chosen]

    def forward(x: np.ndarray) -> np.ndarray:
        return cam.forward(x)[1]

    table: dict[str, Faithfulness] = {}
    for method in methods:
        options = cam.explain_options(method=method, max_channels=max_channels)
        explained = [
            e
            for s in batches(len(batch), 16)
            for e in cam.predict(batch[s], names[s], explain=options)
        ]
        table[method] = evaluate_maps(
            forward,
            ((img, e.heatmap, e.index) for img, e in zip(batch, explained, strict=True)),
            steps,
        )
    h, w = cam.manifest.features_shape[:2]
    predicted = [r.index for s in batches(len(batch), 64) for r in cam.predict(batch[s], names[s])]
    table[RANDOM_BASELINE] = evaluate_maps(
        forward,
        (
            (img, random_map((h, w), img.shape[:2], rng), t)
            for img, t in zip(batch, predicted, strict=True)
        ),
        steps,
    )
    return table


def faithfulness_rows(table: dict[str, Faithfulness]) -> list[dict[str, Any]]:
    return [{"method": name, **asdict(f)} for name, f in table.items()]


def faithfulness_markdown(table: dict[str, Faithfulness]) -> str:
    lines = [
        "| method | deletion AUC (lower is better) | insertion AUC (higher) | average drop % (lower) | increase in confidence % (higher) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, f in table.items():
        lines.append(
            f"| {name} | {f.deletion_auc:.3f} | {f.insertion_auc:.3f} | {f.average_drop:.1f} | {f.increase_in_confidence:.1f} |"
        )
    return "\n".join(lines)


def faithfulness_html(table: dict[str, Faithfulness]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{f.deletion_auc:.3f}</td><td>{f.insertion_auc:.3f}</td>"
        f"<td>{f.average_drop:.1f}</td><td>{f.increase_in_confidence:.1f}</td></tr>"
        for name, f in table.items()
    )
    images = next(iter(table.values())).images if table else 0
    return (
        f"<h2>Faithfulness ({images} images, explaining each prediction)</h2>"
        "<table><tr><th>method</th><th>deletion AUC &darr;</th><th>insertion AUC &uarr;</th>"
        f"<th>average drop % &darr;</th><th>increase in confidence % &uarr;</th></tr>{rows}</table>"
    )
