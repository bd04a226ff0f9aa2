"""``scenecam-edge models``: the shipped bundles and their figures."""

from __future__ import annotations

import json

import click

from ..bundle import read_manifest
from ..errors import BundleError
from ..registry import DEFAULT_MODEL, models_dir, shipped_models


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def models(as_json: bool) -> None:
    """List the shipped models (the default is marked with *)."""
    for name in shipped_models():
        try:
            manifest = read_manifest(models_dir() / name)
        except BundleError as exc:
            click.echo(f"error: {exc.subject}: {exc.reason}", err=True)
            continue
        accuracy = (manifest.evaluation or {}).get("accuracy")
        record = {
            "name": name,
            "default": name == DEFAULT_MODEL,
            "classes": list(manifest.class_names),
            "input": [manifest.input.height, manifest.input.width, manifest.input.channels],
            "validation_accuracy": accuracy,
            "description": manifest.description,
        }
        if as_json:
            click.echo(json.dumps(record))
        else:
            mark = "*" if record["default"] else " "
            acc = f"{accuracy:.1%}" if isinstance(accuracy, float) else "n/a"
            size = f"{manifest.input.height}x{manifest.input.width}x{manifest.input.channels}"
            click.echo(f"{mark} {name:<24} {size:<10} val acc {acc:<7} {manifest.description}")
