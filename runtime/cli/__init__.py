"""The ``scenecam-edge`` command line.

Exit codes: 0 everything worked; 1 some inputs failed (the others were still processed);
2 usage error; 3 the model could not be loaded, or an optional extra is missing.
"""

from __future__ import annotations

import logging

import click

from .._version import __version__
from .batch import batch
from .classify import classify
from .common import missing_extra_command
from .evaluate import evaluate
from .export import export
from .models import models
from .quantize import quantize
from .tiles import tiles
from .train import train

try:  # the camera needs OpenCV, which only the camera extras bring
    from .camera import camera
except ModuleNotFoundError as exc:
    if exc.name != "cv2":
        raise
    camera = missing_extra_command("camera", "camera")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="scenecam-edge")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Classify scene photos and explain each answer with a Grad-CAM heatmap."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


cli.add_command(classify)
cli.add_command(evaluate)
cli.add_command(export)
cli.add_command(train)
cli.add_command(models)
cli.add_command(batch)
cli.add_command(tiles)
cli.add_command(camera)
cli.add_command(quantize)


def main() -> None:
    cli(prog_name="scenecam-edge")
