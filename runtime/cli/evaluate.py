"""``scenecam-edge evaluate``: figures and an HTML report for a bundle on labelled images."""

from __future__ import annotations

from pathlib import Path

import click

from ..cam import METHODS
from ..errors import SceneCamError
from ..model import SceneCam
from .common import EXIT_USAGE, fail, model_options, split_options


@click.command()
@click.argument("data_dir", type=click.Path(exists=True))
@model_options
@click.option(
    "--report",
    "report_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for metrics.json, metrics.md and report.html.",
)
@click.option(
    "--split",
    type=click.Choice(["all", "validation", "train"]),
    default="all",
    show_default=True,
    help="Evaluate every image, or one side of the training split (same --val-split and --seed as training).",
)
@split_options
@click.option(
    "--gallery",
    default=6,
    show_default=True,
    type=click.IntRange(min=0),
    help="Grad-CAM examples per class.",
)
@click.option(
    "--faithfulness",
    is_flag=True,
    help="Also score every CAM method: deletion and insertion AUC, average drop, increase in confidence.",
)
@click.option(
    "--faithfulness-images",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images (a fixed random subset) for the faithfulness scores.",
)
def evaluate(
    data_dir: str,
    model: str | None,
    threads: int | None,
    report_dir: Path,
    split: str,
    val_split: float,
    seed: int,
    gallery: int,
    faithfulness: bool,
    faithfulness_images: int,
) -> None:
    """Evaluate a bundle on DATA_DIR (class-per-folder images, or an .npz with x and y).

    Writes metrics.json (accuracy, per-class precision, recall, F1 and support, macro and
    weighted averages, confusion matrix, and with --faithfulness a table per CAM method), the
    same tables in metrics.md, and a self-contained report.html.
    """
    from scenecam_edge.training.data import load_dataset, stratified_split
    from scenecam_edge.training.report import evaluate as run_evaluation
    from scenecam_edge.training.report import (
        faithfulness_markdown,
        faithfulness_table,
        write_report,
    )

    try:
        scenecam = SceneCam.load(model, threads=threads)
    except SceneCamError as exc:
        fail(exc)
    spec = scenecam.manifest.input
    try:
        data = load_dataset(data_dir, (spec.height, spec.width), spec.channels)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    for path, reason in data.skipped:
        click.echo(f"error: {path}: {reason} (skipped)", err=True)
    if split != "all":
        train_idx, val_idx = stratified_split(data.labels, val_split, seed)
        data = data.subset(val_idx if split == "validation" else train_idx)
    try:
        result = run_evaluation(scenecam, data)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    table = (
        faithfulness_table(scenecam, data, list(METHODS), images=faithfulness_images)
        if faithfulness
        else None
    )
    title = f"{scenecam.manifest.name} on {data_dir} ({split})"
    report = write_report(
        report_dir,
        scenecam,
        data,
        result,
        title=title,
        gallery_per_class=gallery,
        faithfulness=table,
    )
    f = result.figures
    click.echo(
        f"accuracy {f['accuracy']:.4f} on {f['count']} images, macro F1 {f['macro_avg']['f1']:.4f}"
    )
    if table:
        click.echo(faithfulness_markdown(table))
    click.echo(f"wrote {report_dir / 'metrics.json'}, {report_dir / 'metrics.md'} and {report}")
