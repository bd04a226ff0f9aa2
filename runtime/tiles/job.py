"""The job: one scene to its output set and JSON summary; many scenes, resumably.

A scene is finished when its summary ``NAME.json`` exists: it is written last, after every
raster has been renamed into place, so a rerun skips finished scenes and redoes a scene that
was interrupted (its temporary files are removed first). A scene that cannot be read is
reported and the job goes on.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from ..errors import ImageError
from ..model import DEFAULT_BATCH, ExplainOptions, SceneCam
from ..names import too_long
from .faults import deferred_signals
from .raster import StretchChoice
from .tiler import DEFAULT_MIN_VALID, DEFAULT_SCENE_MAX_PIXELS, SceneTiler, TileRow
from .writers import OutputSet, ProbabilityFormat, SceneOutputs

#: Files a folder argument contributes as scenes.
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
#: Files read as lists of scenes, one path a line.
LIST_SUFFIXES = (".txt", ".lst")


#: Where a scene's rows of results come from: (the open tiler, explain settings) -> rows,
#: top to bottom.
RowSource: TypeAlias = Callable[[SceneTiler, ExplainOptions | None], Iterable[TileRow]]


@dataclass(frozen=True)
class TileOptions:
    """How to tile and what to write (the same for every scene of a job). With ``explain``
    the CAM mosaic (NAME.cam.tif) is written too; without it no map is computed."""

    tile: int | None = None
    stride: int | None = None
    bands: tuple[int, ...] | None = None
    stretch: StretchChoice = "model"
    min_valid: float = DEFAULT_MIN_VALID
    probabilities: ProbabilityFormat = "float32"
    cog: bool = True
    batch_size: int = DEFAULT_BATCH
    explain: ExplainOptions | None = None
    max_pixels: int | None = DEFAULT_SCENE_MAX_PIXELS

    @property
    def heatmap(self) -> bool:
        """Whether the CAM mosaic is written: exactly when there are explain options."""
        return self.explain is not None

    def tiler(self, model: SceneCam, scene: str | os.PathLike[str]) -> SceneTiler:
        """``scene`` opened for reading in tiles as these options say."""
        return SceneTiler(
            model,
            scene,
            tile=self.tile,
            stride=self.stride,
            bands=self.bands,
            stretch=self.stretch,
            min_valid=self.min_valid,
            max_pixels=self.max_pixels,
        )


@dataclass
class _Totals:
    classified: int = 0
    nodata: int = 0
    partial: int = 0
    valid_pixels: int = 0
    class_tiles: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, row: TileRow) -> None:
        done = row.classified
        self.classified += int(done.sum())
        self.nodata += int((~done).sum())
        self.partial += int((done & (row.valid < 1.0)).sum())
        self.valid_pixels += int(row.cell_pixels.sum())
        np.add.at(self.class_tiles, row.indices[done], 1)
        np.add.at(self.class_pixels, row.indices[done], row.cell_pixels[done])


def classify_scene(
    model: SceneCam,
    scene: str | os.PathLike[str],
    outputs: OutputSet,
    options: TileOptions = TileOptions(),
    progress: Callable[[int], None] | None = None,
    rows: RowSource | None = None,
    total: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Classify ``scene`` and write its outputs; returns (and writes last) its summary.

    ``progress`` is called with the number of tiles of each finished row; ``total`` once,
    with the scene's number of tiles, when the scene is open. ``rows`` gives
    the rows of results in order (default: the tiler's own, here; the Ray integration's
    come from workers that each classify a block of rows). Raises
    :class:`ImageError` when the scene cannot be read, ValueError for settings that do not
    fit it (bands, tile size), OSError when an output cannot be written; nothing is left
    under a final name then.
    """
    started = time.perf_counter()
    explain = options.explain
    _remove_leftovers(outputs)
    with ExitStack() as stack:
        tiler = stack.enter_context(options.tiler(model, scene))
        if total is not None:
            total(tiler.grid.rows * tiler.grid.cols)
        with deferred_signals():  # a signal acts once the files are in the stack's care
            writers = stack.enter_context(
                SceneOutputs(
                    outputs,
                    tiler,
                    probabilities=options.probabilities,
                    explain=explain,
                    cog=options.cog,
                )
            )
        count = len(model.class_names)
        totals = _Totals(
            class_tiles=np.zeros(count, np.int64), class_pixels=np.zeros(count, np.int64)
        )
        source = (
            rows(tiler, explain)
            if rows is not None
            else tiler.rows(batch_size=options.batch_size, explain=explain)
        )
        for row in source:
            writers.add(row)
            totals.add(row)
            if progress is not None:
                progress(len(row.indices))
        writers.finish()
        summary = _summary(tiler, options, totals, writers.written)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        summary["tiles_per_second"] = round(tiler.grid.count / summary["seconds"], 2)
        try:
            data = json.dumps(summary, indent=2, allow_nan=False) + "\n"
        except ValueError:  # a NaN or inf: JSON has none (the geotransform is checked first)
            raise ImageError(tiler.scene, "its summary has non-finite numbers") from None
        writers.place(data.encode("utf-8"))
    return summary


def _summary(
    tiler: SceneTiler, options: TileOptions, totals: _Totals, written: dict[str, str | None]
) -> dict[str, Any]:
    """The scene's summary (timing added by the caller)."""
    grid, src, names = tiler.grid, tiler.dataset, tiler.model.class_names
    area, unit = tiler.source.pixel_area()
    return {
        "scene": tiler.scene,
        "model": tiler.model.manifest.name,
        "classes": list(names),
        "size": [grid.width, grid.height],
        "crs": None if src.crs is None else src.crs.to_string(),
        "grid": {
            "tile": grid.tile,
            "stride": grid.stride,
            "cols": grid.cols,
            "rows": grid.rows,
        },
        "bands": list(tiler.bands),
        "stretch": None
        if tiler.stretch is None
        else {
            "source": tiler.stretch.source,
            "low": list(tiler.stretch.low),
            "high": list(tiler.stretch.high),
        },
        "min_valid": options.min_valid,
        "fill": "tile mean of valid pixels",
        "tiles": {
            "total": grid.count,
            "classified": totals.classified,
            "nodata": totals.nodata,
            "partly_valid": totals.partial,
            "padded": grid.count - _inside(grid),
        },
        "valid_fraction": totals.valid_pixels / (grid.width * grid.height),
        "area_unit": unit,
        "pixel_area": area,
        "valid_area": totals.valid_pixels * area,
        "class_areas": {
            n: float(p * area) for n, p in zip(names, totals.class_pixels, strict=True)
        },
        # valid pixels in tiles below min_valid: not classified, not in class_areas
        "unclassified_area": float((totals.valid_pixels - totals.class_pixels.sum()) * area),
        "class_tiles": {n: int(t) for n, t in zip(names, totals.class_tiles, strict=True)},
        "outputs": written,
    }


def _inside(grid: Any) -> int:
    """Tiles that lie wholly inside the scene (the others are padded)."""
    rows = sum(1 for r in range(grid.rows) if r * grid.stride + grid.tile <= grid.height)
    cols = sum(1 for c in range(grid.cols) if c * grid.stride + grid.tile <= grid.width)
    return rows * cols


def _remove_leftovers(outputs: OutputSet) -> None:
    """Temporary files of an interrupted run of this scene, and a stale summary."""
    outputs.summary.unlink(missing_ok=True)
    random = "?" * 8  # mkstemp's part of the names temporary_beside and write_bytes_atomic give
    patterns = [f".{glob.escape(p.stem)}.{random}.tmp*" for p in outputs.rasters()]
    patterns.append(f".{glob.escape(outputs.summary.name)}.{random}.tmp")
    for pattern in patterns:
        for leftover in outputs.summary.parent.glob(pattern):
            leftover.unlink(missing_ok=True)


# -- many scenes -----------------------------------------------------------------------------


def expand_scenes(arguments: Iterable[str]) -> list[Path]:
    """Scenes from files, folders (their rasters, sorted), globs and list files (one path a
    line; ``#`` starts a comment). ValueError names an argument that gives no scene."""
    found: list[Path] = []
    for arg in arguments:
        path = Path(arg)
        if too_long(arg):
            items = [path]  # one bad scene: run_scene names it and the others go on
        elif path.is_dir():
            items = sorted(p for p in path.iterdir() if p.suffix.lower() in SCENE_SUFFIXES)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
            entries = [ln.split("#", 1)[0].strip() for ln in lines]
            items = [path.parent / e for e in entries if e]
        elif not path.exists() and glob.has_magic(arg):
            items = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
        else:
            items = [path]  # a file, or a missing one the job reports
        if not items:
            raise ValueError(f"{arg}: no scenes there")
        found.extend(items)
    unique: dict[str, Path] = {}  # the same file named twice is one scene
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def outputs_in(out_dir: Path, scenes: Sequence[Path]) -> list[OutputSet]:
    """One output set per scene in ``out_dir``, named after the scene; ValueError when two
    scenes would share a name."""
    seen: dict[str, Path] = {}
    sets = []
    for scene in scenes:
        stem = scene.stem
        if stem in seen:
            raise ValueError(f"{seen[stem]} and {scene} would both write {out_dir / stem}.tif")
        seen[stem] = scene
        sets.append(OutputSet.beside(out_dir / f"{stem}.tif"))
    return sets


@dataclass(frozen=True)
class SceneOutcome:
    """What became of one scene: ``summary`` when done now, ``skipped`` when an earlier run
    finished it, ``error`` (one line) when it failed; ``write_error`` when that was an
    output that could not be written (naming it: disk full, read-only, ...)."""

    scene: Path
    outputs: OutputSet
    summary: dict[str, Any] | None = None
    skipped: bool = False
    error: str | None = None
    write_error: OSError | None = None


def run_scene(
    model: SceneCam,
    scene: Path,
    outputs: OutputSet,
    options: TileOptions,
    *,
    resume: bool = True,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> SceneOutcome:
    """One scene of a job: skipped when finished, its error caught and reported."""
    if (reason := too_long(scene)) is not None:
        return SceneOutcome(scene, outputs, error=reason)
    if any(too_long(target) for target in (*outputs.rasters(), outputs.summary)):
        return SceneOutcome(scene, outputs, error="its output names would be too long")
    if resume and outputs.summary.is_file():
        return SceneOutcome(scene, outputs, skipped=True)
    try:
        summary = classify_scene(model, scene, outputs, options, progress, total=total)
    except ImageError as exc:
        return SceneOutcome(scene, outputs, error=exc.reason)
    except ValueError as exc:
        return SceneOutcome(scene, outputs, error=str(exc))
    except MemoryError as exc:  # its outputs were removed on the way out; the next may fit
        return SceneOutcome(scene, outputs, error=f"not enough memory ({exc})")
    except OSError as exc:
        reason = f"cannot write {exc.filename or outputs.classes}: {exc.strerror or exc}"
        return SceneOutcome(scene, outputs, error=reason, write_error=exc)
    return SceneOutcome(scene, outputs, summary=summary)
