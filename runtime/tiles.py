"""Large scenes: classify a raster (a GeoTIFF, or anything GDAL reads) tile by tile.

The scene is read one row of tiles at a time (a thread reads the next row while the model
runs), so memory is bounded by a row of tiles, not by the scene. Results go to a GeoTIFF on
the tile grid, with the scene's CRS and its transform scaled to the grid: each output pixel
covers the ``stride`` x ``stride`` square at the centre of its tile. Optionally a Grad-CAM
mosaic at the scene's full resolution, georeferenced like the scene, is written window by
window.

Non-8-bit data (16-bit, float) is stretched to 0-255 per band between two percentiles (2 and
98 by default) computed on a decimated read of the scene (its overviews when it has them).

Needs rasterio: ``pip install 'scenecam-edge[geo]'``. It is imported when a scene is opened,
so the rest of the package works without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from .errors import ImageError, MissingExtraError
from .fileio import temporary_beside
from .model import DEFAULT_BATCH, ExplainOptions, SceneCam
from .results import Explanation

log = logging.getLogger(__name__)

#: Default percentiles of the stretch applied to non-8-bit data.
DEFAULT_PERCENTILES = (2.0, 98.0)
#: The longest side of the decimated read the stretch's percentiles come from.
STATS_SIDE = 1024
#: GDAL's block cache while tiling, in MB: reads and writes stream through it.
GDAL_CACHE_MB = 64


def require_rasterio() -> Any:
    """The rasterio module, or :class:`MissingExtraError` naming the ``geo`` extra."""
    try:
        import rasterio
    except ImportError:
        raise MissingExtraError("rasterio", "geo", "reading and writing rasters") from None
    return rasterio


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` pixels every ``stride`` pixels over a ``height`` x ``width`` scene.

    Only whole tiles are classified: a strip narrower than a stride at the right and bottom
    edges is left out of the class map (and is NaN in the heatmap mosaic).
    """

    height: int
    width: int
    tile: int
    stride: int

    def __post_init__(self) -> None:
        if self.tile < 1 or self.stride < 1:
            raise ValueError(f"tile and stride must be at least 1, not {self.tile}, {self.stride}")
        if self.height < self.tile or self.width < self.tile:
            raise ValueError(
                f"the scene ({self.width} x {self.height} px) is smaller than one tile "
                f"({self.tile} px)"
            )

    @property
    def rows(self) -> int:
        return (self.height - self.tile) // self.stride + 1

    @property
    def cols(self) -> int:
        return (self.width - self.tile) // self.stride + 1

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def transform(self, scene_transform: Any) -> Any:
        """The class map's affine transform: the scene's, scaled to the grid, each output
        pixel centred on its tile."""
        from affine import Affine

        # scene transform, after a shift to the tile's centre square and a scale to the grid
        # (written out: affine's operator for composition changed from * to @ across versions)
        a, b, c, d, e, f = tuple(scene_transform)[:6]
        offset, step = (self.tile - self.stride) / 2, self.stride
        return Affine(
            a * step, b * step, c + (a + b) * offset, d * step, e * step, f + (d + e) * offset
        )


@dataclass(frozen=True)
class Stretch:
    """A linear map of each band from [low, high] to [0, 255], clipped."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, B) numbers to uint8."""
        low = np.asarray(self.low, dtype=np.float32)
        span = np.maximum(np.asarray(self.high, dtype=np.float32) - low, 1e-12)
        scaled = (pixels.astype(np.float32) - low) * (255.0 / span)
        np.nan_to_num(scaled, copy=False, nan=0.0)
        return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class TileRow:
    """The results for one row of tiles: class indices (cols,), probabilities (cols, C) and,
    when explaining, the raw CAM of each tile (cols, h, w) at the features' resolution."""

    row: int
    indices: np.ndarray
    probabilities: np.ndarray
    cams: np.ndarray | None


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """'4,3,2' -> (4, 3, 2); None stays None (the default bands)."""
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"bands must be comma-separated band numbers, not {text!r}") from None
    return bands


class SceneTiler:
    """An open scene, its tile grid, bands and stretch, ready to classify.

    >>> with SceneTiler(model, "scene.tif", tile=150, bands=(4, 3, 2)) as tiler:
    ...     for row in tiler.write("classmap.tif", heatmap_out="cam.tif", explain=options):
    ...         pass
    """

    def __init__(
        self,
        model: SceneCam,
        scene: str | os.PathLike[str],
        *,
        tile: int | None = None,
        stride: int | None = None,
        bands: Sequence[int] | None = None,
        percentiles: tuple[float, float] | None = DEFAULT_PERCENTILES,
    ) -> None:
        rio = require_rasterio()
        self.model = model
        self.scene = os.fspath(scene)
        self._env = ExitStack()
        self._env.enter_context(rio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
                self.dataset = self._env.enter_context(rio.open(self.scene))
        except rio.errors.RasterioIOError as exc:
            self._env.close()
            raise ImageError(self.scene, _first_line(exc)) from None
        try:
            size = tile if tile is not None else model.input_size[0]
            self.grid = TileGrid(
                self.dataset.height, self.dataset.width, size, stride if stride else size
            )
            self.bands = self._check_bands(bands)
            self.stretch = self._plan_stretch(percentiles)
        except BaseException:
            self._env.close()
            raise

    def __enter__(self) -> SceneTiler:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._env.close()

    # -- planning --------------------------------------------------------------------------

    def _check_bands(self, bands: Sequence[int] | None) -> tuple[int, ...]:
        count = self.dataset.count
        channels = self.model.manifest.input.channels
        if bands is None:
            bands = (1, 2, 3) if count >= 3 and channels == 3 else (1,)
        chosen = tuple(bands)
        bad = [b for b in chosen if not 1 <= b <= count]
        if bad:
            raise ValueError(f"the scene has bands 1..{count}; no band {bad[0]}")
        if len(chosen) not in {1, channels}:
            raise ValueError(
                f"the model takes {channels} channel(s): choose 1"
                f"{'' if channels == 1 else f' or {channels}'} bands, not {len(chosen)}"
            )
        return chosen

    def _plan_stretch(self, percentiles: tuple[float, float] | None) -> Stretch | None:
        dtypes = {self.dataset.dtypes[b - 1] for b in self.bands}
        if dtypes == {"uint8"} or percentiles is None:
            return None
        low_p, high_p = percentiles
        if not 0 <= low_p < high_p <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, not {percentiles}")
        from rasterio.enums import Resampling

        factor = max(1, math.ceil(max(self.grid.height, self.grid.width) / STATS_SIDE))
        shape = (
            len(self.bands),
            max(1, self.grid.height // factor),
            max(1, self.grid.width // factor),
        )
        sample = self.dataset.read(
            list(self.bands), out_shape=shape, masked=True, resampling=Resampling.nearest
        )
        lows, highs = [], []
        for band in sample:
            values = np.ma.compressed(band).astype(np.float64)
            values = values[np.isfinite(values)]
            if values.size == 0:
                lows.append(0.0)
                highs.append(255.0)
                continue
            low, high = np.percentile(values, [low_p, high_p])
            lows.append(float(low))
            highs.append(float(high) if high > low else float(low) + 1.0)
        stretch = Stretch(tuple(lows), tuple(highs))
        log.info("%s: stretch %s -> 0..255 (every %d px)", self.scene, stretch, factor)
        return stretch

    # -- reading and classifying -----------------------------------------------------------

    def read_row(self, row: int) -> np.ndarray:
        """One row of tiles, the scene's full width: uint8 (tile, width, channels)."""
        rio = require_rasterio()
        from rasterio.windows import Window

        grid = self.grid
        window = Window(0, row * grid.stride, grid.width, grid.tile)
        try:
            raw = self.dataset.read(list(self.bands), window=window)
        except rio.errors.RasterioError as exc:
            raise ImageError(
                self.scene, f"cannot read tile row {row}: {_first_line(exc)}"
            ) from None
        data = np.moveaxis(raw, 0, -1)
        if self.stretch is not None:
            pixels = self.stretch.apply(data)
        else:
            pixels = np.clip(np.nan_to_num(data), 0, 255).astype(np.uint8, copy=False)
        if pixels.shape[2] == 1 and self.model.manifest.input.channels == 3:
            pixels = np.repeat(pixels, 3, axis=2)
        return np.ascontiguousarray(pixels)

    def rows(
        self, *, batch_size: int = DEFAULT_BATCH, explain: ExplainOptions | None = None
    ) -> Iterator[TileRow]:
        """Classify every tile; yields each row of results, top to bottom.

        Batches run across row boundaries, and the next row is read while the model runs.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        grid = self.grid
        names = self.model.class_names
        cam_shape = self.model.manifest.features_shape[:2]
        cols = grid.cols
        open_rows: dict[int, TileRow] = {}
        filled: dict[int, int] = {}
        next_row = 0
        batch: list[tuple[int, int, np.ndarray]] = []

        def flush() -> Iterator[TileRow]:
            nonlocal next_row
            results = self.model.predict(
                [t for _, _, t in batch],
                [f"{self.scene}[row {r}, col {c}]" for r, c, _ in batch],
                explain=explain,
            )
            for (r, c, _), result in zip(batch, results, strict=True):
                if r not in open_rows:
                    open_rows[r] = TileRow(
                        r,
                        np.zeros(cols, np.int64),
                        np.zeros((cols, len(names)), np.float32),
                        None if explain is None else np.zeros((cols, *cam_shape), np.float32),
                    )
                    filled[r] = 0
                out = open_rows[r]
                out.indices[c] = result.index
                out.probabilities[c] = [result.probabilities[n] for n in names]
                if out.cams is not None and isinstance(result, Explanation):
                    out.cams[c] = result.cam
                filled[r] += 1
            batch.clear()
            while next_row in open_rows and filled[next_row] == cols:
                del filled[next_row]
                yield open_rows.pop(next_row)
                next_row += 1

        with ThreadPoolExecutor(1, thread_name_prefix="scenecam-read") as reader:
            pending = reader.submit(self.read_row, 0)
            for r in range(grid.rows):
                pixels = pending.result()
                if r + 1 < grid.rows:
                    pending = reader.submit(self.read_row, r + 1)
                for c in range(cols):
                    x = c * grid.stride
                    batch.append((r, c, pixels[:, x : x + grid.tile]))
                    if len(batch) == batch_size:
                        yield from flush()
            if batch:
                yield from flush()

    # -- writing ---------------------------------------------------------------------------

    def write(
        self,
        out: str | os.PathLike[str],
        *,
        heatmap_out: str | os.PathLike[str] | None = None,
        batch_size: int = DEFAULT_BATCH,
        explain: ExplainOptions | None = None,
        probabilities: bool = True,
    ) -> Iterator[TileRow]:
        """Classify and write the class map (and the heatmap mosaic); yields each row as it
        is written. Both files appear (atomically, by rename) only when every row is done.

        The class map's band 1 is the class index; with ``probabilities`` one band per class
        follows (``p_<class>``). GeoTIFF bands share one data type, so the file is float32
        then (the indices are exact small integers), and uint8 without probabilities.
        """
        rio = require_rasterio()
        from rasterio.windows import Window

        if heatmap_out is not None and explain is None:
            explain = self.model.explain_options()
        names = self.model.class_names
        grid = self.grid
        src = self.dataset
        common = {"driver": "GTiff", "crs": src.crs, "compress": "deflate"}
        map_profile = {
            **common,
            "width": grid.cols,
            "height": grid.rows,
            "count": 1 + len(names) if probabilities else 1,
            "dtype": "float32" if probabilities else "uint8",
            "transform": grid.transform(src.transform),
            "blockysize": 1,
        }
        with ExitStack() as stack:
            map_tmp = stack.enter_context(_Replacing(out))
            dst = stack.enter_context(rio.open(map_tmp.temporary, "w", **map_profile))
            dst.set_band_description(1, "class")
            for i, name in enumerate(names, 2):
                if probabilities:
                    dst.set_band_description(i, f"p_{name}")
            dst.update_tags(
                classes=json.dumps(list(names)),
                model=self.model.manifest.name,
                tile=str(grid.tile),
                stride=str(grid.stride),
                source=os.path.basename(self.scene),
            )
            mosaic: _Mosaic | None = None
            if heatmap_out is not None and explain is not None:
                cam_tmp = stack.enter_context(_Replacing(heatmap_out))
                cam_profile = {
                    **common,
                    "width": grid.width,
                    "height": grid.height,
                    "count": 1,
                    "dtype": "float32",
                    "transform": src.transform,
                    "nodata": float("nan"),
                    # fast deflate: level 6 took longer than classifying the tiles
                    "zlevel": 1,
                    "predictor": 2,
                    "blockysize": _strip_rows(grid.stride),
                    "BIGTIFF": "IF_SAFER",
                }
                cam_dst = stack.enter_context(rio.open(cam_tmp.temporary, "w", **cam_profile))
                cam_dst.set_band_description(1, f"{explain.method} ({explain.target_space})")
                cam_dst.update_tags(
                    method=explain.method,
                    target_space=explain.target_space,
                    target="prediction" if explain.target is None else names[explain.target],
                )
                mosaic = _Mosaic(cam_dst, grid)
                stack.callback(mosaic.close)  # before cam_dst closes
            for row in self.rows(batch_size=batch_size, explain=explain):
                if probabilities:
                    values = np.concatenate(
                        [row.indices[None, :].astype(np.float32), row.probabilities.T]
                    )
                else:
                    values = row.indices[None, :].astype(np.uint8)
                dst.write(values[:, None, :], window=Window(0, row.row, grid.cols, 1))
                if mosaic is not None:
                    mosaic.add(row)
                yield row
            map_tmp.done = True
            if mosaic is not None:
                mosaic.finish()
                cam_tmp.done = True


class _Mosaic:
    """Full-resolution CAM mosaic written window by window: each tile's raw CAM resized to the
    tile (bilinear), overlapping tiles averaged, pixels no tile covers NaN.

    Windows are written (and compressed) by a thread while the model goes on; at most one
    window waits for it."""

    def __init__(self, dst: Any, grid: TileGrid) -> None:
        self.dst = dst
        self.grid = grid
        self.sums = np.zeros((grid.tile, grid.width), np.float32)
        self.counts = np.zeros((grid.tile, grid.width), np.uint16)
        self.written = 0  # scene rows [0, written) are handed to the writer
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="scenecam-write")
        self._pending: Future[None] | None = None

    def add(self, row: TileRow) -> None:
        grid = self.grid
        top = row.row * grid.stride
        if row.cams is None:
            raise ValueError("the mosaic needs rows classified with explain options")
        for c, cam in enumerate(row.cams):
            x = c * grid.stride
            self.sums[:, x : x + grid.tile] += cv2.resize(
                cam, (grid.tile, grid.tile), interpolation=cv2.INTER_LINEAR
            )
            self.counts[:, x : x + grid.tile] += 1
        last = row.row == grid.rows - 1
        self._emit(top, grid.height if last else top + grid.stride)
        keep = grid.tile - grid.stride
        if keep > 0:  # rows the next tile row still adds to move up
            self.sums[:keep] = self.sums[grid.stride :]
            self.counts[:keep] = self.counts[grid.stride :]
        self.sums[max(keep, 0) :] = 0
        self.counts[max(keep, 0) :] = 0

    def finish(self) -> None:
        """Wait for the last window (raising its error, if any)."""
        self._wait()
        if self.written < self.grid.height:
            raise RuntimeError(f"mosaic incomplete: {self.written} of {self.grid.height} rows")

    def close(self) -> None:
        self._writer.shutdown(wait=True, cancel_futures=True)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _emit(self, top: int, end: int) -> None:
        """Write scene rows [written, end); the buffer holds rows [top, top + tile)."""
        from rasterio.windows import Window

        width = self.grid.width
        while self.written < end:
            y = self.written
            if y < top + self.grid.tile:
                stop = min(end, top + self.grid.tile)
                sums = self.sums[y - top : stop - top]
                counts = self.counts[y - top : stop - top]
                with np.errstate(invalid="ignore", divide="ignore"):
                    block = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            else:
                stop = end
                block = np.full((stop - y, width), np.nan, np.float32)
            self._wait()
            self._pending = self._writer.submit(
                self.dst.write,
                block.astype(np.float32)[None],
                window=Window(0, y, width, stop - y),
            )
            self.written = stop


class _Replacing:
    """A temporary path beside ``target`` (same suffix, for GDAL's driver choice) that is
    renamed over ``target`` on a clean exit once ``done`` is set, and removed otherwise."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.done = False
        self.temporary = temporary_beside(self.target)

    def __enter__(self) -> _Replacing:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None and self.done:
            os.replace(self.temporary, self.target)
        else:
            self.temporary.unlink(missing_ok=True)


def _strip_rows(stride: int) -> int:
    """Rows per strip of the mosaic: a divisor of the stride (at most 16), so each window
    written fills whole strips and no compressed strip is ever rewritten."""
    return max(d for d in range(1, min(16, stride) + 1) if stride % d == 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
