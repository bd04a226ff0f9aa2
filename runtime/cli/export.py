"""``scenecam-edge export``: a Keras model file to a bundle (needs the train extra)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import EXIT_MODEL, fail, needs_train_extra


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
    help="Grad-CAM layer (default: the last 4-D layer feeding the head).",
)
@click.option("--classes", default=None, help="Class names, comma-separated, in output order.")
@click.option("--name", default=None, help="Bundle name (default: the folder name).")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
def export(
    model_file: Path,
    out_dir: Path,
    conv_layer: str | None,
    classes: str | None,
    name: str | None,
    force: bool,
) -> None:
    """Export MODEL_FILE (.keras) to a bundle: model.onnx, head.npz, manifest.json."""
    try:
        from scenecam_edge.export import ExportError, export_keras
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
        )
    except ExportError as exc:
        fail(f"{model_file}: {exc}", EXIT_MODEL)
    click.echo(f"wrote {bundle}")
