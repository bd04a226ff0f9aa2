"""The evaluation's outputs: ``metrics.json``, ``metrics.md`` and a self-contained
``report.html`` (summary, confusion matrix, per-class figures, faithfulness, and a Grad-CAM
gallery). Works without TensorFlow or OpenCV: images are encoded with Pillow.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .dataset import LabelledImages
from .evaluation import Evaluation, faithfulness_rows
from .faithfulness import Faithfulness
from .fileio import write_bytes_atomic, write_json_atomic
from .metrics import class_cells, figures_markdown
from .model import SceneCam
from .names import for_html, for_markdown, path_fields
from .options import ExplainOptions


def write_report(
    out_dir: str | os.PathLike[str],
    cam: SceneCam,
    data: LabelledImages,
    result: Evaluation,
    *,
    title: str,
    gallery_per_class: int = 6,
    faithfulness: dict[str, Faithfulness] | None = None,
    skipped: list[tuple[str, str]] | None = None,
    layer: str | None = None,
    explain: ExplainOptions | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """Write ``metrics.json``, ``metrics.md`` (the tables in Markdown) and ``report.html``
    (confusion matrix, per-class figures, and a Grad-CAM gallery per class with the
    misclassifications first). Each records when it was made and which model made it.
    ``layer`` is the explained layer of the gallery and the faithfulness scores (None: the
    model's default); ``explain``, how the gallery's maps are made (default: Grad-CAM of each
    prediction at ``layer``). ``options``: what the run was asked for that changes its
    figures or maps (``evaluate`` gives its flags, the model's name and sha256): the
    ``options`` object of ``metrics.json`` and a line of ``metrics.md`` and the page."""
    out = Path(out_dir)
    made = provenance(cam)
    left_out = [{**path_fields(path), "reason": reason} for path, reason in skipped or []]
    metrics: dict[str, Any] = {"title": title, **made, **result.figures, "skipped": left_out}
    if options is not None:
        metrics["options"] = dict(options)
    if faithfulness:
        metrics["faithfulness"] = faithfulness_rows(faithfulness)
        metrics["faithfulness_layer"] = layer or cam.manifest.conv_layer
    write_json_atomic(out / "metrics.json", metrics)
    markdown = f"# {for_markdown(title, None)}\n\n{for_markdown(_provenance_line(made), None)}"
    if options is not None:
        markdown += f"\n\n{for_markdown(options_line(options), None)}"
    markdown += f"\n\n{_skipped_text(skipped or [], for_markdown)}"
    markdown += figures_markdown(result.figures)
    if faithfulness:
        markdown += f"\n## Faithfulness\n\n{faithfulness_markdown(faithfulness)}"
    write_bytes_atomic(out / "metrics.md", markdown.encode("utf-8"))
    sections = [
        f"<h1>{for_html(title, None)}</h1>",
        f"<p class=meta>{for_html(_provenance_line(made), None)}</p>",
        f"<p class=meta>{for_html(options_line(options), None)}</p>" if options is not None else "",
        f"<p class=meta>{_skipped_text(skipped, for_html)}</p>" if skipped else "",
        _summary(result.figures),
        _confusion(result.figures),
        _per_class(result.figures),
        faithfulness_html(faithfulness) if faithfulness else "",
        _gallery(cam, data, result, gallery_per_class, explain or cam.explain_options(layer=layer)),
    ]
    page = _PAGE.format(title=for_html(title, None), body="\n".join(sections))
    return write_bytes_atomic(out / "report.html", page.encode("utf-8"))


def provenance(cam: SceneCam) -> dict[str, str]:
    """When the report was made, and the model: name, folder and the graph's sha256."""
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": cam.manifest.name,
        "model_path": str(cam.path),
        "model_sha256": cam.manifest.files.get("model.onnx", ""),
    }


def options_line(options: dict[str, Any]) -> str:
    """``Options: split validation, tta off, target space logit, ...``: each option as it was
    given; an unset one (None, False) says off."""
    shown = ", ".join(
        f"{key.replace('_', ' ')} {_option_value(value)}" for key, value in options.items()
    )
    return f"Options: {shown}."


def _option_value(value: Any) -> str:
    if value is None or value is False:
        return "off"
    if value is True:
        return "on"
    return str(value)


def _skipped_text(left_out: list[tuple[str, str]], escape: Callable[[str], str]) -> str:
    """A paragraph naming the images that could not be read (and so are not counted), each
    name and reason through ``escape`` (:func:`~scenecam_edge.names.for_html` or
    :func:`~scenecam_edge.names.for_markdown`)."""
    if not left_out:
        return ""
    named = "; ".join(f"{escape(path)}: {escape(reason)}" for path, reason in left_out[:10])
    more = f"; and {len(left_out) - 10} more" if len(left_out) > 10 else ""
    return f"{len(left_out)} image(s) could not be read and are not counted: {named}{more}.\n\n"


def _provenance_line(made: dict[str, str]) -> str:
    return (
        f"Model {made['model']} ({made['model_path']}, model.onnx sha256 "
        f"{made['model_sha256'][:16]}...), report made {made['created']}."
    )


def _summary(f: dict[str, Any]) -> str:
    m, w = f["macro_avg"], f["weighted_avg"]
    return (
        f"<p class=big>Accuracy <b>{f['accuracy']:.2%}</b> on {f['count']} images &middot; "
        f"macro F1 {m['f1']:.3f}{_over(f)} &middot; weighted F1 {w['f1']:.3f}</p>"
    )


def _over(f: dict[str, Any]) -> str:
    """`` (over the 2 of 6 classes in the data)`` when the macro average leaves some out."""
    present, total = f["macro_avg"].get("classes"), len(f["class_names"])
    return (
        ""
        if present is None or present == total
        else f" (over the {present} of {total} classes in the data)"
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
                f'<td style="{style}" title="{share:.1%} of {for_html(name, None)}">{cm[i, j]}</td>'
            )
        rows.append(f"<tr><th>{for_html(name, None)}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{for_html(n, None)}</th>" for n in names)
    return (
        "<h2>Confusion matrix</h2><p>Rows: true class; columns: predicted. Shade: share of the row.</p>"
        f"<table class=cm><tr><th></th>{head}</tr>{''.join(rows)}</table>"
    )


def _per_class(f: dict[str, Any]) -> str:
    rows = [
        f"<tr><th>{for_html(n, None)}</th>"
        + "".join(f"<td>{cell}</td>" for cell in class_cells(f, n))
        + f"<td>{c['support']}</td></tr>"
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


def _gallery(
    cam: SceneCam, data: LabelledImages, result: Evaluation, per_class: int, options: ExplainOptions
) -> str:
    if per_class <= 0:
        return ""
    parts = [
        "<h2>Grad-CAM gallery</h2><p>Per true class: misclassified first (most confident "
        "mistakes first), then correct. Each card shows the photo and the Grad-CAM overlay of "
        "the class the model predicted (named under the card); click a card to enlarge it.</p>"
    ]
    for c, name in enumerate(data.class_names):
        members = np.flatnonzero(data.labels == c)
        if not len(members):
            continue
        wrong = members[result.predictions[members] != c]
        right = members[result.predictions[members] == c]
        wrong = wrong[np.argsort(-result.confidences[wrong])]
        right = right[np.argsort(-result.confidences[right])]
        chosen = np.concatenate([wrong, right])[:per_class]
        explained = cam.predict(
            [data.images[i] for i in chosen], [data.sources[i] for i in chosen], explain=options
        )
        cards = [_card(data, i, c, e) for i, e in zip(chosen, explained, strict=True)]
        parts.append(
            f"<h3>{for_html(name, None)} ({len(wrong)} of {len(members)} misclassified)</h3>"
            f"<div class=row>{''.join(cards)}</div>"
        )
    return "\n".join(parts)


def _card(data: LabelledImages, i: int, true: int, e: Any) -> str:
    """One gallery card: photo and overlay side by side, what the map explains below."""
    ok = e.index == true
    name = for_html(Path(data.sources[i]).name)
    verdict = (
        f"&#10003; {for_html(e.label, None)} {e.confidence:.0%}"
        if ok
        else f"&#10007; called {for_html(e.label, None)} {e.confidence:.0%}, "
        f"truly {for_html(data.class_names[true], None)}"
    )
    return (
        f'<figure class="{"ok" if ok else "bad"}" tabindex=0 '
        "onclick=\"this.classList.toggle('big')\">"
        f'<img src="data:image/jpeg;base64,{_jpeg(e.picture)}" alt="{name}">'
        f'<img src="data:image/jpeg;base64,{_jpeg(e.overlay)}" alt="Grad-CAM of {name}">'
        f"<figcaption>{verdict}<br><small>map explains: {for_html(e.target_label, None)}"
        f"</small><br><small>{name}</small></figcaption></figure>"
    )


def _jpeg(image: np.ndarray) -> str:
    """Base64 JPEG of a uint8 (H, W), (H, W, 1) or (H, W, 3) image."""
    buffer = io.BytesIO()
    pixels = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ padding: .35em .7em; border: 1px solid #ddd; text-align: right; }}
th {{ background: #f6f6f6; }}
table.cm td {{ min-width: 3.5em; text-align: center; font-weight: 600; }}
tr.avg th, tr.avg td {{ background: #fafafa; font-style: italic; }}
.big {{ font-size: 1.25em; }} .meta {{ color: #666; font-size: .9em; }}
.row {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; width: 316px; font-size: .85em; text-align: center; cursor: zoom-in; }}
figure img {{ width: 150px; height: 150px; border: 4px solid; image-rendering: auto; }}
figure.ok img {{ border-color: #3a3; }} figure.bad img {{ border-color: #d33; }}
figure.big {{ width: 100%; cursor: zoom-out; }}
figure.big img {{ width: 45%; height: auto; }}
dl.metrics dt {{ font-weight: 600; }} dl.metrics dd {{ margin: 0 0 .5em 1.5em; }}
</style></head><body>
{body}
</body></html>
"""


#: (column, attribute, format, True where higher is better)
_FAITHFULNESS_COLUMNS = (
    ("deletion AUC", "deletion_auc", "{:.3f}", False),
    ("insertion AUC", "insertion_auc", "{:.3f}", True),
    ("average drop %", "average_drop", "{:.1f}", False),
    ("increase in confidence %", "increase_in_confidence", "{:.1f}", True),
)

FAITHFULNESS_EXPLAINED = (
    (
        "deletion AUC (lower is better)",
        "The most salient pixels are replaced by a blurred copy "
        "of the photo, in 16 steps; the area under the explained class's probability curve. A "
        "faithful map removes the evidence first, so the probability falls fast.",
    ),
    (
        "insertion AUC (higher is better)",
        "The reverse: the most salient pixels are put back "
        "into the blurred copy first; a faithful map brings the probability back fast.",
    ),
    (
        "average drop % (lower is better)",
        "How much the probability falls when the photo is "
        "multiplied by the heatmap (Grad-CAM++ paper).",
    ),
    (
        "increase in confidence % (higher is better)",
        "Share of photos whose probability rises when multiplied by the heatmap.",
    ),
)


def _best(table: dict[str, Faithfulness]) -> dict[str, str]:
    """For each column, the method (the baseline excluded) with the best value."""
    methods = {k: v for k, v in table.items() if "baseline" not in k} or table
    best: dict[str, str] = {}
    for _, attr, _, higher in _FAITHFULNESS_COLUMNS:
        ranked = sorted(methods, key=lambda m: float(getattr(methods[m], attr)))
        best[attr] = ranked[-1] if higher else ranked[0]
    return best


def faithfulness_markdown(table: dict[str, Faithfulness]) -> str:
    """The table, best value of each column in bold, then what each column means."""
    best = _best(table)
    head = " | ".join(
        f"{name} ({'higher' if higher else 'lower'} is better)"
        for name, _, _, higher in _FAITHFULNESS_COLUMNS
    )
    lines = [f"| method | {head} |", "|---|" + "---:|" * len(_FAITHFULNESS_COLUMNS)]
    for name, f in table.items():
        cells = []
        for _, attr, fmt, _ in _FAITHFULNESS_COLUMNS:
            text = fmt.format(getattr(f, attr))
            cells.append(f"**{text}**" if best[attr] == name else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {term}: {meaning}" for term, meaning in FAITHFULNESS_EXPLAINED]
    lines.append(
        "- Bold: the best method in each column. The random map is the floor a map "
        "must beat to say anything about the model."
    )
    return "\n".join(lines) + "\n"


def faithfulness_html(table: dict[str, Faithfulness]) -> str:
    best = _best(table)
    rows = []
    for name, f in table.items():
        cells = []
        for _, attr, fmt, _ in _FAITHFULNESS_COLUMNS:
            text = fmt.format(getattr(f, attr))
            cells.append(f"<td><b>{text}</b></td>" if best[attr] == name else f"<td>{text}</td>")
        rows.append(f"<tr><th>{for_html(name, None)}</th>{''.join(cells)}</tr>")
    head = "".join(
        f"<th>{name} {'&uarr;' if higher else '&darr;'}</th>"
        for name, _, _, higher in _FAITHFULNESS_COLUMNS
    )
    explained = "".join(
        f"<dt>{html.escape(term)}</dt><dd>{html.escape(meaning)}</dd>"
        for term, meaning in FAITHFULNESS_EXPLAINED
    )
    images = next(iter(table.values())).images if table else 0
    return (
        f"<h2>Faithfulness ({images} images, explaining each prediction)</h2>"
        f"<table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"
        "<p>Bold: the best method in each column (&uarr; higher is better, &darr; lower). "
        "The random map is the floor a map must beat.</p>"
        f"<dl class=metrics>{explained}</dl>"
    )
