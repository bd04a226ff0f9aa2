"""``scenecam-edge export``: a Keras model file to a bundle (needs the train extra)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    EXIT_MODEL,
    fail,
    needs_train_extra,
    quiet_tensorflow,
    refuse_existing_output,
)
from .interrupts import note_progress


@click.command()
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Bundle folder to write.",
)
@click.option(
    "--conv-layer",
    default=None,
    metavar="LAYER",
    help="Grad-CAM layer (default: the last layer with spatial extent before the head). "
    "Inside a nested model: 'outer/inner', e.g. 'resnet50/conv5_block3_out'. A layer with "
    "convolutions after it gets a second graph for its exact gradient (head.onnx).",
)
@click.option(
    "--extra-layer",
    "extra_layers",
    multiple=True,
    metavar="LAYER",
    help="Another layer to explain on request (repeatable): served by --layer LAYER, e.g. "
    "a ResNet's stage 3 for maps twice as fine. The default stays --conv-layer.",
)
@click.option(
    "--preprocess",
    default=None,
    metavar="SCALING",
    help="Scaling the model expects but does not contain, baked into the graph: none, 0..1, "
    "-1..1, caffe, torch, or 'mean=M1,M2,..;std=S1,S2,..' on the 0..255 scale.",
)
@click.option("--classes", default=None, help="Class names, comma-separated, in output order.")
@click.option("--name", default=None, help="Bundle name (default: the folder name).")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
def export(
    model_file: Path,
    out_dir: Path,
    conv_layer: str | None,
    extra_layers: tuple[str, ...],
    preprocess: str | None,
    classes: str | None,
    name: str | None,
    force: bool,
) -> None:
    """Export MODEL_FILE (.keras) to a bundle: model.onnx, head.npz, manifest.json.

    Any failure prints one line naming the layer and the reason, and exits 3.
    """
    note_progress(lambda: f"nothing written to {out_dir} (the bundle is written whole, at the end)")
    refuse_existing_output(out_dir, force)
    from scenecam_edge.export.errors import ExportError
    from scenecam_edge.export.preprocess import parse

    try:
        scaling = parse(preprocess) if preprocess is not None else None
    except ExportError as exc:
        raise click.BadParameter(str(exc), param_hint="--preprocess") from None
    with quiet_tensorflow():  # TensorFlow's native start-up lines, unless -v
        try:
            from scenecam_edge.export import export_keras
        except ImportError:
            needs_train_extra("export")
        class_names = [c.strip() for c in classes.split(",")] if classes else None
        try:
            bundle = export_keras(
                model_file,
                out_dir,
                conv_layer=conv_layer,
                class_names=class_names,
                name=name,
                overwrite=force,
                preprocess=scaling,
                extra_layers=extra_layers,
            )
        except ExportError as exc:
            fail(f"{model_file}: {exc}", EXIT_MODEL)
        except Exception as exc:  # TensorFlow, Keras or tf2onnx failing in a way we did not foresee
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            fail(f"{model_file}: export failed ({type(exc).__name__}: {message})", EXIT_MODEL)
        click.echo(f"wrote {bundle}")
