"""``scenecam-edge tiles``: classify large rasters tile by tile into GIS-ready maps."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..cam import TargetSpace
from ..errors import SceneCamError
from ..model import DEFAULT_BATCH, SceneCam
from ..tiles.faults import check_interrupted, interruptible, libtiff_lines_hidden
from ..tiles.tiler import DEFAULT_SCENE_MAX_PIXELS

if TYPE_CHECKING:
    from ..tiles import OutputSet, StretchChoice, TileOptions

from .common import (
    EXIT_FAILED_INPUTS,
    EXIT_MODEL,
    EXIT_USAGE,
    cam_options,
    error_line,
    explain_options,
    fail,
    is_storage_error,
    keep_going_past_file_size_limit,
    load_model,
    model_options,
    refuse_unused_map_flags,
    renamed_option,
    shown,
    tta_option,
    with_renamed,
    write_failed,
)
from .interrupts import exit_interrupted, note_progress, signal_number


@click.command()
@click.argument("scenes", nargs=-1, required=True, metavar="SCENE...")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="One scene's class map (NAME.tif; NAME.probs.tif, NAME.cam.tif, NAME.json beside it).",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for every scene's outputs, named after the scene; finished scenes are skipped.",
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
    metavar="N,N,...",
    help="Bands to use, 1-based, in the order the model was trained on, e.g. 4,3,2 or "
    "4,3,2,8 (default: the first bands, as many as the model takes).",
)
@click.option(
    "--stretch",
    default="model",
    show_default=True,
    metavar="model|LOW,HIGH|none",
    help="How band values become 0-255: the model's recorded range (else 8-bit as is and "
    "per-scene 2-98 percentiles), per-scene percentiles LOW,HIGH, or 'none' (clip).",
)
@click.option(
    "--min-valid",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Tiles with a smaller share of valid pixels are nodata in every output.",
)
@click.option(
    "--probabilities",
    type=click.Choice(["float32", "uint8", "none"]),
    default="float32",
    show_default=True,
    help="NAME.probs.tif: one band per class and the valid fraction; uint8 is scaled by 1/254.",
)
@click.option(
    "--cog/--no-cog",
    default=True,
    show_default=True,
    help="Cloud-optimised GeoTIFFs (tiled, compressed, overviews) or plain ones.",
)
@click.option(
    "--heatmaps", is_flag=True, help="Also write NAME.cam.tif, the CAM mosaic at full resolution."
)
@renamed_option("--heatmap", "--heatmaps", "heatmaps", is_flag=True, value=True)
@cam_options(alpha=False, layer=False)
@tta_option
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_SCENE_MAX_PIXELS,
    show_default=True,
    help="Refuse scenes that declare more pixels than this (before reading them).",
)
@model_options
def tiles(
    scenes: tuple[str, ...],
    out: Path | None,
    out_dir: Path | None,
    tile: int | None,
    stride: int | None,
    bands: str | None,
    stretch: str,
    min_valid: float,
    probabilities: str,
    cog: bool,
    heatmaps: bool,
    target: str | None,
    target_space: TargetSpace,
    method: str,
    max_channels: int,
    tta: bool,
    batch_size: int,
    max_pixels: int,
    model: str | None,
    threads: int | None,
) -> None:
    """Classify SCENE... (GeoTIFFs, folders of them, globs, or .txt lists) tile by tile.

    Each scene gives a class map on the tile grid (uint8, colour table, class names,
    nodata 255), probabilities, optionally a CAM mosaic, and a JSON summary (class areas
    in the scene's units, valid fraction, timing). Nodata, NaN and masked pixels are read
    from the scene; edge tiles are padded, so the whole scene is covered. Memory stays
    bounded by a row of tiles. Needs the geo extra: pip install 'scenecam-edge[geo]'.

    Exit codes: 0 done; 1 a scene could not be read or written (the others are done);
    2 usage error; 3 the model could not be loaded, or rasterio is missing; 5 an output
    could not be written (disk full, read-only); 130/143/129 interrupted by SIGINT, SIGTERM,
    SIGHUP (finished scenes are kept whole, the scene in progress leaves nothing).
    """
    heatmap = bool(with_renamed("heatmaps", heatmaps or None, "--heatmaps"))
    refuse_unused_map_flags(heatmap, "--heatmaps", also=("target",))
    from ..tiles import (
        OutputSet,
        TileOptions,
        expand_scenes,
        outputs_in,
        parse_bands,
        require_rasterio,
    )

    try:
        require_rasterio()
    except SceneCamError as exc:
        fail(exc, EXIT_MODEL)
    if (out is None) == (out_dir is None):
        fail("give --out (one scene) or --out-dir (any number of scenes)", EXIT_USAGE)
    try:
        paths = expand_scenes(scenes)
        if out_dir is not None:
            sets = outputs_in(out_dir, paths)
        elif len(paths) == 1 and out is not None:
            sets = [OutputSet.beside(out)]
        else:
            raise ValueError(f"--out takes one scene, not {len(paths)}: use --out-dir")
        _check_not_inputs(paths, sets)
        band_list = parse_bands(bands)
        choice = _parse_stretch(stretch)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    scenecam = load_model(model, threads, spin=False, tta=tta)
    channels = scenecam.manifest.input.channels
    if band_list is not None and len(band_list) not in ({1, 3} if channels == 3 else {channels}):
        fail(f"--bands: the model takes {channels} bands, not {len(band_list)}", EXIT_USAGE)
    size = tile if tile is not None else scenecam.input_size[0]
    if stride is not None and stride > size:
        fail(f"--stride {stride} is larger than the tile ({size} px)", EXIT_USAGE)
    explain = explain_options(scenecam, target, method, target_space, max_channels=max_channels)
    options = TileOptions(
        tile=tile,
        stride=stride,
        bands=band_list,
        stretch=choice,
        min_valid=min_valid,
        probabilities=probabilities,  # type: ignore[arg-type]
        cog=cog,
        batch_size=batch_size,
        explain=explain if heatmap else None,
        max_pixels=max_pixels,
    )
    keep_going_past_file_size_limit()
    counts = _Counts()
    where = shown(str(out_dir if out_dir is not None else out))
    note_progress(
        lambda: (
            f"{counts.finished} of {len(paths)} scene(s) finished in {where}; the one in "
            "progress left nothing under its names (a rerun with --out-dir skips the finished "
            "ones)"
        )
    )
    start = time.perf_counter()
    try:
        with interruptible(), libtiff_lines_hidden():
            _run(scenecam, paths, sets, options, resume=out is None, counts=counts)
    except KeyboardInterrupt as exc:  # Interrupted (SIGTERM, SIGHUP) is one: 130, 143, 129
        # here, while interruptible's handlers still ignore a second signal
        exit_interrupted(click.get_current_context(), signal_number(exc))
    except OSError as exc:  # an output could not be written: the next would fail alike
        write_failed(exc, "output")
    if len(paths) > 1:
        click.echo(
            f"summary: {len(paths)} scenes, {counts.done} done, {counts.skipped} skipped, "
            f"{counts.failed} failed in {time.perf_counter() - start:.1f} s",
            err=True,
        )
    if counts.failed:
        sys.exit(EXIT_FAILED_INPUTS)


@dataclass
class _Counts:
    finished: int = 0  # done, skipped or failed
    done: int = 0
    skipped: int = 0
    failed: int = 0


def _run(
    scenecam: SceneCam,
    paths: list[Path],
    sets: list[OutputSet],
    options: TileOptions,
    *,
    resume: bool,
    counts: _Counts,
) -> None:
    """Every scene in turn; a storage error (disk full, read-only) is raised: it stops the
    job."""
    from tqdm import tqdm

    from ..tiles import run_scene

    tty = sys.stderr.isatty()
    with tqdm(
        total=len(paths),
        desc="scenes",
        unit="scene",
        file=sys.stderr,
        disable=not tty or len(paths) < 2,
    ) as scene_bar:
        for path, outputs in zip(paths, sets, strict=True):
            with tqdm(
                desc=shown(path.name, 40),
                unit="tile",
                file=sys.stderr,
                disable=not tty,
                leave=False,
            ) as bar:

                def progress(tiles: int, bar: Any = bar) -> None:
                    check_interrupted()
                    bar.update(tiles)

                outcome = run_scene(
                    scenecam,
                    path,
                    outputs,
                    options,
                    resume=resume,
                    progress=progress,
                    total=_total_of(bar),
                )
            check_interrupted()
            scene_bar.update(1)
            if outcome.write_error is not None and is_storage_error(outcome.write_error):
                raise outcome.write_error
            counts.finished += 1
            if outcome.error is not None:
                counts.failed += 1
                error_line(str(path), _without_name(outcome.error, path))
            elif outcome.skipped:
                counts.skipped += 1
                click.echo(
                    f"{shown(str(path))}: finished before ({shown(str(outputs.summary))}), skipped",
                    err=True,
                )
            elif outcome.summary is not None:
                counts.done += 1
                click.echo(_describe(outcome.summary), err=True)


def _describe(summary: dict[str, Any]) -> str:
    grid, counts = summary["grid"], summary["tiles"]
    areas = summary["class_areas"]
    total = sum(areas.values()) or 1.0
    shares = ", ".join(
        f"{n} {a / total:.0%}" for n, a in sorted(areas.items(), key=lambda x: -x[1]) if a > 0
    )
    stretch = summary["stretch"]
    scaling = (
        ""
        if stretch is None
        else f"; stretch ({stretch['source']}) [{','.join(f'{v:g}' for v in stretch['low'])}]"
        f" .. [{','.join(f'{v:g}' for v in stretch['high'])}] to 0..255"
    )
    return (
        f"{summary['scene']}: {counts['total']} tiles ({grid['cols']} x {grid['rows']}, "
        f"{grid['tile']} px every {grid['stride']}), {counts['classified']} classified, "
        f"{counts['nodata']} nodata, valid {summary['valid_fraction']:.0%}, "
        f"in {summary['seconds']:.1f} s ({summary['tiles_per_second']:.1f} tiles/s) -> "
        f"{summary['outputs']['classes']}\n"
        f"  classes by area: {shares or 'none'}{scaling}"
    )


def _total_of(bar: Any) -> Callable[[int], None]:
    """Give a progress bar its total (and so the time left) once it is known."""

    def total(count: int) -> None:
        bar.total = count
        bar.refresh()

    return total


def _without_name(reason: str, path: Path) -> str:
    """GDAL's sentence without the file's name, which the error line gives first."""
    for quoted in (f"'{path}' ", f"{path}: ", f"'{path.resolve()}' "):
        reason = reason.replace(quoted, "")
    return reason


def _check_not_inputs(paths: list[Path], sets: list[OutputSet]) -> None:
    inputs = {p.resolve() for p in paths}
    for outputs in sets:
        for target in (*outputs.rasters(), outputs.summary):
            if target.resolve() in inputs:
                raise ValueError(f"{target}: an output would overwrite a scene")


def _parse_stretch(text: str) -> StretchChoice:
    word = text.strip().lower()
    if word == "none":
        return None
    if word == "model":
        return "model"
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"--stretch takes 'model', LOW,HIGH percentiles or 'none', not {text!r}"
        ) from None
    if not 0 <= low < high <= 100:
        raise ValueError(f"--stretch percentiles must satisfy 0 <= LOW < HIGH <= 100, not {text}")
    return low, high
