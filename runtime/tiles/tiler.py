"""Classifying a scene tile by tile: rows of results, in bounded memory.

The scene is read one row of tiles at a time (a thread reads the next row while the model
runs), so memory is bounded by a row of tiles, not by the scene. Batches run across row
boundaries.

A tile whose valid fraction (its valid pixels over its pixels inside the scene) is below
``min_valid`` is not classified: it is nodata (index -1, NaN probabilities). So an edge tile
is judged on its part inside the scene, not on its padding. A classified tile's invalid
pixels (nodata, NaN, masked, padding beyond the scene's edge) are filled with the mean of its
valid pixels, band by band; ``TileRow.valid`` records the share of the tile that was real.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..closing import Closing
from ..errors import ImageError
from ..model import DEFAULT_BATCH, ExplainOptions, SceneCam
from ..results import Explanation
from .grid import TileGrid
from .raster import Scene, Stretch, StretchChoice, fill_invalid, model_stretch

#: Tiles with less than this share of valid pixels are nodata (``min_valid``).
DEFAULT_MIN_VALID = 0.5
#: The memory a row of tiles may take while it is read and stretched (see _check_row_memory).
ROW_BYTES_LIMIT = 4 << 30
#: Scenes that declare more pixels are refused when opened (``max_pixels``, ``--max-pixels``):
#: 4 gigapixels, a 63,000 px square (a Sentinel-2 tile is 10,980 px square).
DEFAULT_SCENE_MAX_PIXELS = 4_000_000_000


@dataclass(frozen=True)
class TileRow:
    """The results for one row of tiles (``cols`` tiles).

    ``indices`` (cols,) int64, -1 where the tile is nodata; ``probabilities`` (cols, C)
    float32, NaN where nodata; ``valid`` (cols,) float32, the share of each tile's pixels
    that are valid (padding counts as invalid); ``inside`` (cols,) float32, valid pixels
    over the tile's pixels inside the scene (what ``min_valid`` is compared with);
    ``cell_pixels`` (cols,) int64, the valid scene pixels in each output cell (for areas);
    ``cams`` (cols, h, w) the raw CAM of each tile at the features' resolution (NaN where
    nodata) when explaining; ``mask`` (tile, padded width) bool, the valid pixels."""

    row: int
    indices: np.ndarray
    probabilities: np.ndarray
    valid: np.ndarray
    inside: np.ndarray
    cell_pixels: np.ndarray
    cams: np.ndarray | None
    mask: np.ndarray

    @property
    def classified(self) -> np.ndarray:
        return self.indices >= 0


class SceneTiler(Closing):
    """An open scene, its tile grid, bands and stretch, ready to classify.

    >>> with SceneTiler(model, "scene.tif", bands=(4, 3, 2, 8)) as tiler:
    ...     for row in tiler.rows():
    ...         print(row.row, row.indices)
    """

    def __init__(
        self,
        model: SceneCam,
        scene: str | os.PathLike[str],
        *,
        tile: int | None = None,
        stride: int | None = None,
        bands: Sequence[int] | None = None,
        stretch: StretchChoice = "model",
        min_valid: float = DEFAULT_MIN_VALID,
        max_pixels: int | None = DEFAULT_SCENE_MAX_PIXELS,
    ) -> None:
        if not 0.0 < min_valid <= 1.0:
            raise ValueError(f"min_valid must be in (0, 1], not {min_valid}")
        self.model = model
        self.min_valid = min_valid
        self.source = Scene(
            scene,
            channels=model.manifest.input.channels,
            bands=bands,
            stretch=stretch,
            scaling=model_stretch(model.manifest),
            max_pixels=max_pixels,
        )
        try:
            _check_georeferencing(self.source)
            size = tile if tile is not None else model.input_size[0]
            self.grid = TileGrid(
                self.source.height, self.source.width, size, stride if stride else size
            )
            _check_row_memory(self.source, self.grid)
        except BaseException:
            self.source.close()
            raise

    @property
    def scene(self) -> str:
        return self.source.path

    @property
    def dataset(self) -> Any:
        """rasterio's open dataset."""
        return self.source.dataset

    @property
    def bands(self) -> tuple[int, ...]:
        return self.source.bands

    @property
    def stretch(self) -> Stretch | None:
        return self.source.stretch

    def close(self) -> None:
        self.source.close()

    def read_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """One row of tiles: uint8 pixels (tile, padded width, channels) and valid mask."""
        return self.source.read_row(self.grid, row)

    def rows(
        self,
        *,
        batch_size: int = DEFAULT_BATCH,
        explain: ExplainOptions | None = None,
        first: int = 0,
        stop: int | None = None,
    ) -> Iterator[TileRow]:
        """Classify every tile of rows ``first`` to ``stop`` (default: all); yields each row
        of results, top to bottom (a block of rows for one worker: the Ray integration)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        grid = self.grid
        stop = grid.rows if stop is None else stop
        if not 0 <= first <= stop <= grid.rows:
            raise ValueError(f"rows {first}..{stop} are not within 0..{grid.rows}")
        if first == stop:
            return
        open_rows: dict[int, TileRow] = {}
        waiting: dict[int, int] = {}  # row -> tiles sent to the model, not yet back
        next_row = first
        queued = first  # rows [first, queued) have every tile in a batch
        batch: list[tuple[int, int, np.ndarray]] = []

        def finished() -> Iterator[TileRow]:
            nonlocal next_row
            while next_row < queued and waiting[next_row] == 0:
                del waiting[next_row]
                yield open_rows.pop(next_row)
                next_row += 1

        def flush() -> Iterator[TileRow]:
            results = self.model.predict(
                [t for _, _, t in batch],
                [f"{self.scene}[row {r}, col {c}]" for r, c, _ in batch],
                explain=explain,
            )
            for (r, c, _), result in zip(batch, results, strict=True):
                out = open_rows[r]
                out.indices[c] = result.index
                out.probabilities[c] = [result.probabilities[n] for n in self.model.class_names]
                if out.cams is not None and isinstance(result, Explanation):
                    out.cams[c] = result.cam
                waiting[r] -= 1
            batch.clear()
            yield from finished()

        with ThreadPoolExecutor(1, thread_name_prefix="scenecam-read") as reader:
            pending = reader.submit(self.read_row, first)
            for r in range(first, stop):
                pixels, mask = pending.result()
                if r + 1 < stop:
                    pending = reader.submit(self.read_row, r + 1)
                open_rows[r] = row = self._empty_row(r, mask, explain is not None)
                waiting[r] = 0
                for c in range(grid.cols):
                    x = c * grid.stride
                    if row.inside[c] < self.min_valid:
                        continue
                    tile = pixels[:, x : x + grid.tile]
                    if row.valid[c] < 1.0:
                        tile = fill_invalid(tile, mask[:, x : x + grid.tile])
                    batch.append((r, c, tile))
                    waiting[r] += 1
                    if len(batch) == batch_size:
                        yield from flush()
                queued = r + 1
                yield from finished()
            if batch:
                yield from flush()

    def _empty_row(self, r: int, mask: np.ndarray, explaining: bool) -> TileRow:
        """A row of nodata results, with the valid fraction of each tile and cell."""
        grid = self.grid
        cols = grid.cols
        counts = np.array(
            [mask[:, c * grid.stride : c * grid.stride + grid.tile].sum() for c in range(cols)],
            np.float32,
        )
        top, bottom = grid.row_span(r)
        widths = [min(grid.tile, grid.width - c * grid.stride) for c in range(cols)]
        in_scene = (bottom - top) * np.array(widths, np.float32)
        y0, y1 = grid.cell_rows(r)
        in_cells = mask[y0 - top : y1 - top].sum(axis=0, dtype=np.int64)
        starts = [grid.cell_cols(c)[0] for c in range(cols)]
        cell_pixels = np.add.reduceat(in_cells[: grid.width], starts)
        cam_shape = self.model.manifest.features_shape[:2]
        return TileRow(
            row=r,
            indices=np.full(cols, -1, np.int64),
            probabilities=np.full((cols, len(self.model.class_names)), np.nan, np.float32),
            valid=counts / (grid.tile * grid.tile),
            inside=counts / in_scene,
            cell_pixels=cell_pixels.astype(np.int64),
            cams=np.full((cols, *cam_shape), np.nan, np.float32) if explaining else None,
            mask=mask,
        )


def _check_georeferencing(scene: Scene) -> None:
    """Refuse a geotransform with NaN or inf, or whose areas overflow: the outputs would
    carry it and the summary's areas could not be written as JSON."""
    transform = tuple(scene.dataset.transform)[:6]
    area, _ = scene.pixel_area()
    shown = ", ".join(f"{v:g}" for v in transform)
    if not all(math.isfinite(v) for v in transform):
        reason = f"its geotransform ({shown}) is not finite"
    elif not math.isfinite(area * scene.width * scene.height):
        reason = f"its geotransform ({shown}) makes the scene's area overflow"
    else:
        return
    raise ImageError(scene.path, f"{reason}: fix its georeferencing")


def _check_row_memory(scene: Scene, grid: TileGrid) -> None:
    """Refuse a scene whose row of tiles would not fit in memory (a 300-byte sparse TIFF of
    1,000,000,000 x 4 pixels is within the pixel limit, and its one row is 11 GiB)."""
    itemsize = max(np.dtype(scene.dataset.dtypes[b - 1]).itemsize for b in scene.bands)
    # the values as read, as float (the stretch), and as uint8 pixels, for every chosen band
    need = grid.tile * grid.padded_width * len(scene.bands) * (itemsize + 8 + 1)
    if need > ROW_BYTES_LIMIT:
        raise ImageError(
            scene.path,
            f"a row of tiles ({grid.tile} x {grid.padded_width} px) needs "
            f"{need / 2**30:.1f} GiB, over the limit of {ROW_BYTES_LIMIT / 2**30:.0f} GiB: "
            "choose a smaller --tile, or split the scene",
        )
