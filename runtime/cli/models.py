"""``scenecam-edge models``: the shipped bundles, their figures and where each one is."""

from __future__ import annotations

import json
from typing import Any

import click

from ..bundle import read_manifest
from ..errors import BundleError
from ..models import REPOSITORY_ONLY
from ..registry import DEFAULT_MODEL, models_dir, not_installed, shipped_models


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
        accuracy = (manifest.evaluation or {}).get("accuracy")
        record = {
            "name": name,
            "default": name == DEFAULT_MODEL,
            "classes": list(manifest.class_names),
            "input": [manifest.input.height, manifest.input.width, manifest.input.channels],
            "validation_accuracy": accuracy,
            "description": manifest.description,
            "installed": True,
            "path": str(path),
            "size_mb": round(sum(f.stat().st_size for f in path.iterdir()) / 1e6, 1),
        }
        if as_json:
            click.echo(json.dumps(record))
        else:
            mark = "*" if record["default"] else " "
            acc = f"{accuracy:.1%}" if isinstance(accuracy, float) else "n/a"
            size = f"{manifest.input.height}x{manifest.input.width}x{manifest.input.channels}"
            click.echo(f"{mark} {name:<24} {size:<10} val acc {acc:<7} {manifest.description}")
            click.echo(f"  {'':<24} {record['size_mb']} MB in {path}")
    for name in sorted(set(REPOSITORY_ONLY) - set(shipped_models())):
        missing: dict[str, Any] = {"name": name, "default": False, "installed": False, "path": None}
        if as_json:
            click.echo(json.dumps({**missing, "note": not_installed(name)}))
        else:
            click.echo(f"  {name:<24} {not_installed(name)}")
