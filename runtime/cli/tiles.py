"""``scenecam-edge tiles``: classify a large raster tile by tile into a georeferenced map."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import click

from ..errors import ImageError, SceneCamError
from ..model import DEFAULT_BATCH, SceneCam
from .common import (
    EXIT_FAILED_INPUTS,
    EXIT_MODEL,
    EXIT_USAGE,
    cam_options,
    fail,
    model_options,
)


@click.command()
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Class map (GeoTIFF): band 1 the class index, then one probability band per class.",
)
@click.option(
    "--tile",
    type=click.IntRange(min=1),
    default=None,
    help="Tile size in scene pixels (default: the model's input size).",
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=None,
    help="Pixels between tiles (default: the tile size; smaller overlaps them).",
)
@click.option(
    "--bands",
    default=None,
    metavar="B,G,R",
    help="Bands to use, 1-based, in the model's channel order, e.g. 4,3,2 (default: 1,2,3).",
)
@click.option(
    "--stretch",
    default="2,98",
    show_default=True,
    metavar="LOW,HIGH|none",
    help="Percentiles that map non-8-bit data to 0-255 ('none': clip instead).",
)
@click.option(
    "--heatmap-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a full-resolution Grad-CAM mosaic (float32 GeoTIFF, raw CAM values).",
)
@cam_options(alpha=False)
@click.option(
    "--probabilities/--no-probabilities",
    default=True,
    show_default=True,
    help="Write the probability bands (float32 file) or the class index alone (uint8).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True)
@model_options
def tiles(
    scene: str,
    out: Path,
    tile: int | None,
    stride: int | None,
    bands: str | None,
    stretch: str,
    heatmap_out: Path | None,
    target: str | None,
    target_space: str,
    method: str,
    probabilities: bool,
    batch_size: int,
    model: str | None,
    threads: int | None,
) -> None:
    """Classify SCENE (a GeoTIFF or any raster GDAL reads) tile by tile.

    Writes --out on the tile grid, with the scene's CRS and its transform scaled to the
    grid; memory stays bounded by a row of tiles. Tiles that would cross the right or
    bottom edge are left out. Needs the geo extra: pip install 'scenecam-edge[geo]'.

    Exit codes: 0 done; 1 the scene cannot be read; 2 usage error; 3 the model could not be
    loaded, or rasterio is missing.
    """
    from ..tiles import SceneTiler, parse_bands, require_rasterio

    try:
        require_rasterio()
    except SceneCamError as exc:
        fail(exc, EXIT_MODEL)
    scene_real = os.path.realpath(scene)
    outputs = [out] + ([heatmap_out] if heatmap_out is not None else [])
    if any(os.path.realpath(o) == scene_real for o in outputs):
        fail(f"{scene}: an output would overwrite the scene", EXIT_USAGE)
    if heatmap_out is not None and os.path.realpath(heatmap_out) == os.path.realpath(out):
        fail("--out and --heatmap-out name the same file", EXIT_USAGE)
    try:
        band_list = parse_bands(bands)
        percentiles = _parse_percentiles(stretch)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        # No busy-waiting between runs: the cores go to decoding (reading) meanwhile.
        scenecam = SceneCam.load(model, threads=threads, spin=False)
    except SceneCamError as exc:
        fail(exc)
    try:
        options = scenecam.explain_options(target, method, target_space)  # type: ignore[arg-type]
    except ValueError as exc:
        fail(f"--target: {exc}", EXIT_USAGE)
    explaining = heatmap_out is not None or target is not None
    try:
        tiler = SceneTiler(
            scenecam, scene, tile=tile, stride=stride, bands=band_list, percentiles=percentiles
        )
    except ImageError as exc:
        fail(exc, EXIT_FAILED_INPUTS)
    except ValueError as exc:
        fail(f"{scene}: {exc}", EXIT_USAGE)
    from tqdm import tqdm

    grid = tiler.grid
    counts: Counter[int] = Counter()
    start = time.perf_counter()
    with (
        tiler,
        tqdm(
            total=grid.count,
            desc="tiles",
            unit="tile",
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
            dynamic_ncols=True,
        ) as bar,
    ):
        try:
            for row in tiler.write(
                out,
                heatmap_out=heatmap_out,
                batch_size=batch_size,
                explain=options if explaining else None,
                probabilities=probabilities,
            ):
                counts.update(int(i) for i in row.indices)
                bar.update(len(row.indices))
        except ImageError as exc:  # the scene cannot be read part-way through
            fail(exc, EXIT_FAILED_INPUTS)
        except OSError as exc:  # an output cannot be written
            fail(f"{exc.filename or out}: {exc.strerror or exc}", EXIT_USAGE)
    seconds = time.perf_counter() - start
    names = scenecam.class_names
    shares = ", ".join(
        f"{names[i]} {n / grid.count:.0%}" for i, n in sorted(counts.items(), key=lambda x: -x[1])
    )
    click.echo(
        f"summary: {grid.count} tiles ({grid.cols} x {grid.rows}, {grid.tile} px every "
        f"{grid.stride}) in {seconds:.1f} s ({grid.count / seconds:.1f} tiles/s) -> {out}",
        err=True,
    )
    click.echo(f"classes: {shares}", err=True)
    if tiler.stretch is not None:
        low = ",".join(f"{v:g}" for v in tiler.stretch.low)
        high = ",".join(f"{v:g}" for v in tiler.stretch.high)
        click.echo(f"stretch: bands {tiler.bands} from [{low}] .. [{high}] to 0..255", err=True)


def _parse_percentiles(text: str) -> tuple[float, float] | None:
    if text.strip().lower() == "none":
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--stretch takes LOW,HIGH percentiles or 'none', not {text!r}") from None
    if not 0 <= low < high <= 100:
        raise ValueError(f"--stretch percentiles must satisfy 0 <= LOW < HIGH <= 100, not {text}")
    return low, high
