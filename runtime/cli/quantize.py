"""``scenecam-edge quantize``: a float bundle to an int8 bundle (needs onnx: the quantize extra)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import MissingExtraError, SceneCamError
from .common import (
    EXIT_FAILED_INPUTS,
    EXIT_USAGE,
    decoding_bar,
    error_line,
    fail,
    load_model,
    model_options,
    quiet_tensorflow,
    refuse_existing_output,
    shown,
    split_options,
)
from .interrupts import note_progress

# The defaults live in scenecam_edge.export.quantize, which needs onnx; these mirror them so
# that --help works without it (a test keeps them equal).
CALIBRATION_IMAGES = 300
#: Fewer calibration images than this are refused unless --min-calibration says otherwise:
#: int8 ranges measured on a handful of images do not hold for the rest.
MIN_CALIBRATION = 100
MAX_ACCURACY_DROP_POINTS = 1.0
MIN_CAM_CORRELATION = 0.9


@click.command()
@click.argument("bundle", metavar="[BUNDLE]", required=False)
@model_options(default="none; it may also come first, as BUNDLE")
@click.option(
    "--calibration",
    "calibration_dir",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    metavar="DATA_DIR",
    help="Class-per-folder images (or an .npz) the model was trained on; any folder of "
    "images also works, without accuracy figures.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Bundle folder to write.",
)
@click.option(
    "--calibration-images",
    default=CALIBRATION_IMAGES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images from the training side of the split to calibrate on.",
)
@click.option(
    "--min-calibration",
    default=MIN_CALIBRATION,
    show_default=True,
    type=click.IntRange(min=1),
    help="Refuse to calibrate on fewer images than this (a small data set: lower it).",
)
@split_options
@click.option(
    "--activation-type",
    type=click.Choice(["uint8", "int8"]),
    default="uint8",
    show_default=True,
    help="uint8 activations with int8 weights (U8S8) ran fastest on x86 with VNNI.",
)
@click.option(
    "--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True
)
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
)
@click.option(
    "--reduce-range/--full-range",
    default=True,
    show_default=True,
    help="7-bit weights, right on every x86 CPU. --full-range: 8-bit weights, for targets "
    "that all have VNNI (without it, U8S8 products saturate and accuracy drops).",
)
@click.option(
    "--max-accuracy-drop",
    default=MAX_ACCURACY_DROP_POINTS,
    show_default=True,
    type=float,
    help="Refuse the int8 model if its accuracy is more than this many points below float.",
)
@click.option(
    "--min-cam-correlation",
    default=MIN_CAM_CORRELATION,
    show_default=True,
    type=float,
    help="Refuse the int8 model if its Grad-CAM maps correlate less with the float ones.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the decoded calibration and comparison images are cached (default: "
    "$SCENECAM_CACHE, else $XDG_CACHE_HOME/scenecam-edge, else ~/.cache/scenecam-edge).",
)
@click.option("--no-cache", is_flag=True, help="Decode the images without a cache.")
@click.option("--name", default=None, help="Bundle name (default: the folder name).")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
def quantize(
    bundle: str | None,
    model: str | None,
    threads: int | None,
    calibration_dir: Path,
    out_dir: Path,
    calibration_images: int,
    min_calibration: int,
    val_split: float | None,
    seed: int | None,
    activation_type: str,
    weight_type: str,
    calibration_method: str,
    reduce_range: bool,
    max_accuracy_drop: float,
    min_cam_correlation: float,
    cache_dir: Path | None,
    no_cache: bool,
    name: str | None,
    force: bool,
) -> None:
    """Write an int8 copy of the float model --model (a shipped model's name or a bundle
    folder; BUNDLE, the first argument, names it the same way) into --out.

    onnxruntime static quantisation in QDQ form (per-channel weights), calibrated on
    --calibration-images training images. The classifier head stays float, so the logits
    come from the same features the Grad-CAM maps use. On the validation split it prints
    (and records in the manifest) both models' accuracy, how often they agree, and how well
    their Grad-CAM maps correlate. It exits 1 and writes nothing when a target is missed.

    \b
    scenecam-edge quantize --model scenes-mini --calibration ../shared/data/intel-scenes/train \\
        --out models/scenes-mini-int8 --force
    """
    if bundle is not None and model is not None and bundle != model:
        fail(f"two models given: BUNDLE {bundle} and --model {model}; give one", EXIT_USAGE)
    chosen = model if model is not None else bundle
    if chosen is None:
        fail("give the float model to quantise: --model NAME|DIR (or BUNDLE)", EXIT_USAGE)
    refuse_existing_output(out_dir, force)
    note_progress(lambda: f"nothing written to {out_dir} (the bundle is written whole, at the end)")
    with quiet_tensorflow():  # TensorFlow's native start-up lines, unless -v
        try:
            from scenecam_edge.export import quantize as q
        except ImportError as exc:
            missing = (exc.name or "onnx").split(".")[0]
            fail(MissingExtraError(missing, "quantize", "quantize"))

        settings = q.QuantSettings(
            activation_type=activation_type,
            weight_type=weight_type,
            reduce_range=reduce_range,
            calibration_method=calibration_method,
        )
        reference = load_model(chosen, threads)
        try:
            with decoding_bar("calibration") as progress:
                data = q.calibration_data(
                    calibration_dir,
                    reference,
                    calibration_images,
                    val_fraction=val_split,
                    seed=seed,
                    cache_dir=None if no_cache else (cache_dir or q.default_cache_dir()),
                    progress=progress,
                )
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        for path, reason in data.skipped:
            error_line(path, reason)
        _cache_note(data)
        if len(data.calibration) < min_calibration:
            fail(
                f"{calibration_dir}: {len(data.calibration)} calibration image(s), fewer than "
                f"{min_calibration}: int8 ranges from so few do not hold for other images; add "
                f"images, or pass --min-calibration {len(data.calibration)} to go on",
                EXIT_USAGE,
            )
        command = "scenecam-edge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        try:
            result = q.quantize_bundle(
                reference.path,
                out_dir,
                data,
                settings=settings,
                name=name,
                command=command,
                max_accuracy_drop_points=max_accuracy_drop,
                min_cam_correlation=min_cam_correlation,
                threads=threads,
                overwrite=force,
                progress=lambda message: click.echo(message, err=True),
            )
        except q.TargetMissed as exc:
            fail(str(exc), EXIT_FAILED_INPUTS)
        except q.QuantizeError as exc:
            fail(str(exc), EXIT_USAGE)
        except SceneCamError as exc:
            fail(exc)
        c = result.comparison
        sizes = result.manifest["quantization"]["size_bytes"]
        click.echo(f"{settings.label} QDQ, per-channel weights, {len(data.calibration)} images")
        if c.float_accuracy is not None and c.int8_accuracy is not None:
            click.echo(
                f"accuracy on {c.images} validation images: float {c.float_accuracy:.4f}, "
                f"int8 {c.int8_accuracy:.4f} ({100 * (c.int8_accuracy - c.float_accuracy):+.2f} points)"
            )
        click.echo(f"predictions agree on {c.prediction_agreement:.1%} of {c.images} images")
        if reference.manifest.trained_on_every_image:
            click.echo(
                f"note: {reference.manifest.name} was trained on every image, these included: "
                "its accuracy here is not an estimate (agreement and maps still compare)",
                err=True,
            )
        click.echo(
            f"Grad-CAM correlation int8 vs float: mean {c.cam_correlation_mean:.4f}, "
            f"median {c.cam_correlation_median:.4f}, min {c.cam_correlation_min:.4f}"
        )
        for layer, r in c.layers.items():
            click.echo(
                f"  at {layer}: mean {r['cam_correlation_mean']:.4f}, "
                f"median {r['cam_correlation_median']:.4f}, min {r['cam_correlation_min']:.4f}"
            )
        click.echo(f"model.onnx {sizes['float'] / 1e6:.2f} MB -> {sizes['int8'] / 1e6:.2f} MB")
        click.echo(f"wrote {result.path}")
        if data.skipped:
            sys.exit(EXIT_FAILED_INPUTS)


def _cache_note(data: Any) -> None:
    """Where the decoded images went (or came from), and how big that file is."""
    if data.cache is None:
        return
    size = data.cache.stat().st_size / 1e6
    what = f"{len(data.calibration) + len(data.evaluation)} decoded images"
    if data.cache_written:
        text = f"cached the {what} it uses in {shown(str(data.cache))} ({size:.1f} MB)"
    else:
        text = f"read the {what} it uses from the cache {shown(str(data.cache))} ({size:.1f} MB)"
    click.echo(f"note: {text}; --no-cache to decode without one", err=True)
