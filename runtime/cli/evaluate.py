"""``scenecam-edge evaluate``: figures and an HTML report for a bundle on labelled images.

Runs in a runtime-only install: the data reader, metrics and report are the runtime's own.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from tqdm import tqdm

from ..cam import METHODS, TargetSpace
from ..dataset import LabelledImages, align_classes, load_dataset, stratified_split
from ..evaluation import (
    estimate_faithfulness_seconds,
    faithfulness_scores,
    recorded_split,
    summaries,
)
from ..evaluation import evaluate as run_evaluation
from ..faithfulness import Faithfulness
from ..model import DEFAULT_BATCH, SceneCam
from ..report import faithfulness_markdown, write_report
from .common import (
    EXIT_FAILED_INPUTS,
    EXIT_USAGE,
    cam_options,
    decoding_bar,
    error_line,
    explain_options,
    fail,
    load_model,
    model_options,
    refuse_unused_map_flags,
    shown,
    split_options,
    tta_option,
)
from .interrupts import note_progress

log = logging.getLogger(__name__)


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
    help="Evaluate every image, or one side of the training split (by default the one the "
    "bundle's manifest records).",
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
@cam_options(alpha=True, target=False)
@tta_option
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True)
def evaluate(
    data_dir: str,
    model: str | None,
    threads: int | None,
    report_dir: Path,
    split: str,
    val_split: float | None,
    seed: int | None,
    gallery: int,
    faithfulness: bool,
    faithfulness_images: int,
    target_space: TargetSpace,
    method: str,
    alpha: float,
    layer: str | None,
    max_channels: int,
    tta: bool,
    batch_size: int,
) -> None:
    """Evaluate a bundle on DATA_DIR (class-per-folder images, or an .npz with x and y).

    Folders are matched to the model's classes ignoring case, and may cover only some of
    them. Writes metrics.json, metrics.md and a self-contained report.html. Macro averages
    are over the classes in the data, and say how many. The map flags shape the gallery's
    maps (--method) and the faithfulness scores (--layer, --max-channels).
    """
    refuse_unused_map_flags(gallery > 0 or faithfulness, "--gallery N or --faithfulness")
    if split == "all" and (val_split is not None or seed is not None):
        fail("--val-split and --seed choose a side of the split: add --split", EXIT_USAGE)
    scenecam = load_model(model, threads, tta=tta)
    options = explain_options(
        scenecam, None, method, target_space, alpha, max_channels, layer=layer
    )
    layer = options.layer
    spec = scenecam.manifest.input
    try:
        with decoding_bar("reading") as progress:
            data = align_classes(
                load_dataset(
                    data_dir,
                    (spec.height, spec.width),
                    spec.channels,
                    stretch=scenecam.band_stretch,
                    progress=progress,
                ),
                scenecam.class_names,
            )
    except ValueError as exc:  # the reader's messages name the folder already
        message = str(exc)
        fail(message if message.startswith(data_dir) else f"{data_dir}: {message}", EXIT_USAGE)
    if scenecam.manifest.trained_on_every_image:
        training = scenecam.manifest.training or {}
        click.echo(
            f"note: {scenecam.manifest.name} was trained on every image of "
            f"{training.get('dataset')}: on those images these figures "
            "measure how well it fits them, not how it does on new ones",
            err=True,
        )
    skipped = data.skipped  # the split below keeps only the images that were read
    for path, reason in skipped:
        error_line(path, reason)
    if split != "all":
        val_split, seed = recorded_split(scenecam, val_split, seed)
        train_idx, val_idx = stratified_split(data.labels, val_split, seed)
        data = data.subset(val_idx if split == "validation" else train_idx)
    if not len(data):
        fail(f"{data_dir}: no images to evaluate", EXIT_USAGE)
    note_progress(lambda: f"no report written to {report_dir} (it is written at the end)")
    with _bar(len(data), "evaluate", "img") as bar:
        result = run_evaluation(
            scenecam, data, batch_size, progress=lambda done, total: bar.update(done - bar.n)
        )
    table = (
        _faithfulness(scenecam, data, faithfulness_images, layer, max_channels)
        if faithfulness
        else None
    )
    where = f"{split}, validation share {val_split:g}, seed {seed}" if split != "all" else split
    title = f"{scenecam.manifest.name} on {data_dir} ({where})"
    report = write_report(
        report_dir,
        scenecam,
        data,
        result,
        title=title,
        gallery_per_class=gallery,
        faithfulness=table,
        skipped=skipped,
        layer=layer,
        explain=options,
        options={
            "model": scenecam.manifest.name,
            "model_sha256": scenecam.manifest.files.get("model.onnx", ""),
            "split": split,
            "val_split": val_split if split != "all" else None,
            "seed": seed if split != "all" else None,
            "tta": tta,
            "layer": layer or scenecam.manifest.conv_layer,
            "method": options.method,
            "target_space": options.target_space,
            "max_channels": options.max_channels,
            "gallery": gallery,
            "faithfulness_images": min(faithfulness_images, len(data)) if faithfulness else None,
        },
    )
    f = result.figures
    classes, total = f["macro_avg"]["classes"], len(f["class_names"])
    over = "" if classes == total else f" over the {classes} of {total} classes in the data"
    click.echo(
        f"accuracy {f['accuracy']:.4f} on {f['count']} images, "
        f"macro F1 {f['macro_avg']['f1']:.4f}{over}"
    )
    if table:
        click.echo(faithfulness_markdown(table))
    where = shown(str(report_dir))
    click.echo(f"wrote {where}/metrics.json, {where}/metrics.md and {where}/{report.name}")
    if skipped:
        sys.exit(EXIT_FAILED_INPUTS)


def _faithfulness(
    cam: SceneCam, data: LabelledImages, images: int, layer: str | None, max_channels: int
) -> dict[str, Faithfulness]:
    """Every CAM method's faithfulness, with an estimate up front and progress on stderr: a
    bar on a terminal, a log line every tenth of the way with -v elsewhere."""
    methods = list(METHODS)
    seconds = estimate_faithfulness_seconds(cam, data, methods, images)
    n = min(images, len(data))
    click.echo(
        f"faithfulness: {len(methods)} methods and a random baseline on {n} images, "
        f"about {_duration(seconds)}",
        err=True,
    )
    with _bar(n * (len(methods) + 1), "faithfulness", "map") as bar:
        step = max(1, (n * (len(methods) + 1)) // 10)

        def progress(done: int, total: int) -> None:
            bar.update(1)
            if done % step == 0 or done == total:
                log.info("faithfulness: %d of %d maps scored", done, total)

        scores = faithfulness_scores(
            cam,
            data,
            methods,
            images=images,
            progress=progress,
            layer=layer,
            max_channels=max_channels,
        )
        return summaries(scores)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _bar(total: int, desc: str, unit: str) -> tqdm:
    """A progress bar on stderr with its total and the time left, only on a terminal."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
