"""``scenecam-edge models``: the shipped bundles, their figures and where each one is."""

from __future__ import annotations

import json
from typing import Any

import click

from ..bundle import Manifest, read_manifest
from ..errors import BundleError
from ..models import REPOSITORY_ONLY
from ..options import describe_layers
from ..registry import DEFAULT_MODEL, models_dir, not_installed, resolve_model, shipped_models
from .common import fail


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def models(as_json: bool) -> None:
    """List the models (the default is marked with *) and the folder each one loads from."""
    for name in shipped_models():
        path = models_dir() / name
        try:
            manifest = read_manifest(path)
        except BundleError as exc:
            click.echo(f"error: {exc.subject}: {exc.reason}", err=True)
            continue
        accuracy, estimated = validation_accuracy(manifest)
        record = {
            "name": name,
            "default": name == DEFAULT_MODEL,
            "classes": list(manifest.class_names),
            "input": [manifest.input.height, manifest.input.width, manifest.input.channels],
            "validation_accuracy": accuracy,
            "accuracy_estimated_from_recipe": estimated,
            "description": manifest.description,
            "installed": True,
            "path": str(path),
            "size_mb": round(sum(f.stat().st_size for f in path.iterdir()) / 1e6, 1),
            "layers": layer_records(manifest),
        }
        if as_json:
            click.echo(json.dumps(record))
        else:
            mark = "*" if record["default"] else " "
            acc = f"{accuracy:.1%}" if isinstance(accuracy, float) else "n/a"
            acc += " (est.)" if estimated else ""
            size = f"{manifest.input.height}x{manifest.input.width}x{manifest.input.channels}"
            click.echo(f"{mark} {name:<24} {size:<10} val acc {acc:<7} {manifest.description}")
            click.echo(f"  {'':<24} {record['size_mb']} MB in {path}")
            click.echo(f"  {'':<24} explains {describe_layers(manifest.layers)}")
    for name in sorted(set(REPOSITORY_ONLY) - set(shipped_models())):
        missing: dict[str, Any] = {"name": name, "default": False, "installed": False, "path": None}
        if as_json:
            click.echo(json.dumps({**missing, "note": not_installed(name)}))
        else:
            click.echo(f"  {name:<24} {not_installed(name)}")


def validation_accuracy(manifest: Manifest) -> tuple[float | None, bool]:
    """The manifest's validation accuracy, and whether it is the recipe's estimate (a model
    trained on every image, ``train --val-split 0 --estimate-from RUN``) rather than the
    model's own."""
    evaluation = manifest.evaluation or {}
    accuracy = evaluation.get("accuracy")
    return (
        accuracy if isinstance(accuracy, float) else None,
        "estimate_from" in evaluation,
    )


def layer_records(manifest: Manifest) -> list[dict[str, Any]]:
    """The layers a bundle explains (the default first): name, map size, gradient."""
    return [
        {
            "name": layer.name,
            "default": i == 0,
            "map": list(layer.shape[:2]),
            "channels": layer.shape[2],
            "gradient": layer.gradient,
            "straight_through": layer.straight_through,
        }
        for i, layer in enumerate(manifest.layers)
    ]


@click.command()
@click.argument("model", required=False, metavar="[NAME|DIR]")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def info(model: str | None, as_json: bool) -> None:
    """Describe a model (default: the shipped default): input, classes and the layers it
    explains (pass one to --layer). Reads the manifest only; exit 3 if it is not valid."""
    try:
        path = resolve_model(model)
        manifest = read_manifest(path)
    except BundleError as exc:
        fail(exc)
    accuracy, estimated = validation_accuracy(manifest)
    layers = layer_records(manifest)
    record = {
        "name": manifest.name,
        "path": str(path),
        "input": [manifest.input.height, manifest.input.width, manifest.input.channels],
        "classes": list(manifest.class_names),
        "validation_accuracy": accuracy,
        "accuracy_estimated_from_recipe": estimated,
        "layers": layers,
    }
    if as_json:
        click.echo(json.dumps(record))
        return
    size = f"{manifest.input.height}x{manifest.input.width}x{manifest.input.channels}"
    click.echo(f"{manifest.name} ({path}): input {size}, {manifest.num_classes} classes")
    click.echo(f"classes: {', '.join(manifest.class_names)}")
    click.echo("layers (--layer NAME):")
    for layer in layers:
        mark = " (default)" if layer["default"] else ""
        how = "VJP graph" if layer["gradient"] == "vjp_graph" else "closed form"
        if layer["straight_through"]:
            how += ", straight-through (int8 after it)"
        h, w = layer["map"]
        click.echo(f"  {layer['name']}: {h}x{w} x {layer['channels']}, gradient {how}{mark}")
