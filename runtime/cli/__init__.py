"""The ``scenecam-edge`` command line.

Exit codes: 0 everything worked; 1 some inputs failed (the others were still processed);
2 usage error; 3 the model could not be loaded, or an optional extra is missing; 4 another
run is writing the same results file (``batch``); 5 an output could not be written (disk
full, read-only, file size limit, a symbolic link at the output path); 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM). See docs/robustness.md.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import click
from PIL import Image

from .._version import __version__
from ..errors import MissingExtraError
from .batch import batch
from .camera import camera  # imports OpenCV (the camera extras) only when it runs
from .classify import classify
from .common import fail
from .evaluate import evaluate
from .export import export
from .interrupts import exit_interrupted, signal_number, terminate_raises
from .models import info, models
from .quantize import quantize
from .tiles import tiles
from .train import train


class _Commands(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            with terminate_raises():
                return super().invoke(ctx)
        except MissingExtraError as exc:  # an extra found missing mid-run (geo, for a TIFF)
            fail(exc)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM: 130 or 143, and one line
            exit_interrupted(ctx, signal_number(exc))


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="scenecam-edge")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Classify scene photos and explain each answer with a Grad-CAM heatmap."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Images are refused by --max-pixels from their header, in one line; Pillow's own
    # warning past 89 megapixels would add two raw lines (its error past 179 stays guarded)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


#: One line each for ``scenecam-edge --help``: click would cut the docstrings' first
#: sentences at the terminal's width, mid-sentence.
SUMMARIES = {
    classify: "Classify photos and save their Grad-CAM panels.",
    batch: "Classify many images into a resumable JSONL or CSV file.",
    tiles: "Classify a satellite or aerial scene tile by tile.",
    camera: "Classify and explain a camera, video file or stream live.",
    evaluate: "Score a model on labelled images; write an HTML report.",
    models: "List the shipped models.",
    info: "Describe a model: classes and the layers it explains.",
    train: "Train a model on labelled images (train extra).",
    export: "Turn a Keras model into a bundle (train extra).",
    quantize: "Write an int8 copy of a bundle (quantize extra).",
}
for command, summary in SUMMARIES.items():
    command.short_help = summary
    cli.add_command(command)


def main() -> None:
    cli(prog_name="scenecam-edge")
