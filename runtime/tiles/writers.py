"""Writing a scene's outputs as GIS-ready GeoTIFFs, atomically.

Per scene, beside the class map ``NAME.tif``:

- ``NAME.tif``: the class map on the tile grid, uint8, one band ``class``, nodata 255, a
  colour table (nodata transparent), and the class names as GDAL category names and a
  raster attribute table (``NAME.tif.aux.xml``, GDAL's sidecar, which QGIS reads).
- ``NAME.probs.tif`` (unless ``probabilities="none"``): one band per class ``p_<class>``,
  then ``valid_fraction`` (each tile's share of valid pixels). float32 with NaN nodata, or
  uint8 scaled by 1/254 (the scale is in the file: GIS tools show 0..1) with nodata 255.
- ``NAME.cam.tif`` (when explaining): the CAM mosaic at the scene's resolution, float32, NaN
  outside the footprint and in nodata tiles.

Each file is first written as a plain GeoTIFF under a temporary name, then (``cog=True``)
copied to a cloud-optimised GeoTIFF (GDAL's COG driver: tiled, deflate, overviews), and
renamed to its final name only when every row is done.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import escape

import numpy as np

from ..fileio import temporary_beside, write_bytes_atomic
from .grid import TileGrid
from .raster import require_rasterio
from .tiler import TileRow

ProbabilityFormat = Literal["float32", "uint8", "none"]
PROBABILITY_FORMATS: tuple[ProbabilityFormat, ...] = ("float32", "uint8", "none")
RASTER_SUFFIXES = (".tif", ".tiff")
CLASS_NODATA = 255
UINT8_SCALE = 254
#: Distinct colours for the first classes (then evenly spaced hues).
PALETTE = [
    (31, 119, 180), (44, 160, 44), (214, 39, 40), (255, 127, 14), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def check_raster_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if its extension names a GeoTIFF, else ValueError in one line."""
    target = Path(path)
    if target.suffix.lower() not in RASTER_SUFFIXES:
        raise ValueError(
            f"{target}: outputs are GeoTIFFs; name them .tif or .tiff, not {target.suffix or '(none)'}"
        )
    return target


@dataclass(frozen=True)
class OutputSet:
    """The files one scene produces, named from its class map ``NAME.tif``."""

    classes: Path
    probabilities: Path
    heatmap: Path
    summary: Path

    def rasters(self) -> tuple[Path, Path, Path]:
        return self.classes, self.probabilities, self.heatmap

    @classmethod
    def beside(cls, classes: str | os.PathLike[str]) -> OutputSet:
        target = check_raster_path(classes)
        stem, suffix = target.with_suffix(""), target.suffix
        return cls(
            target,
            Path(f"{stem}.probs{suffix}"),
            Path(f"{stem}.cam{suffix}"),
            Path(f"{stem}.json"),
        )


def class_colours(count: int) -> dict[int, tuple[int, int, int, int]]:
    """A colour table: a distinct colour per class, nodata transparent."""
    table: dict[int, tuple[int, int, int, int]] = {}
    for i in range(count):
        if i < len(PALETTE):
            table[i] = (*PALETTE[i], 255)
        else:
            r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9)
            table[i] = (round(r * 255), round(g * 255), round(b * 255), 255)
    table[CLASS_NODATA] = (0, 0, 0, 0)
    return table


def category_sidecar(names: Sequence[str], colours: dict[int, tuple[int, int, int, int]]) -> str:
    """GDAL's PAM sidecar (``.aux.xml``) for band 1: category names and a thematic raster
    attribute table (value, class, colour), which QGIS shows as the legend."""
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">', "    <CategoryNames>"]
    lines += [f"      <Category>{escape(n)}</Category>" for n in names]
    lines += ["    </CategoryNames>", '    <GDALRasterAttributeTable tableType="thematic">']
    for i, (name, kind, usage) in enumerate(fields):
        lines.append(
            f'      <FieldDefn index="{i}"><Name>{name}</Name><Type>{kind}</Type>'
            f"<Usage>{usage}</Usage></FieldDefn>"
        )
    for i, name in enumerate(names):
        r, g, b, _ = colours[i]
        cells = "".join(f"<F>{v}</F>" for v in (i, escape(name), r, g, b))
        lines.append(f'      <Row index="{i}">{cells}</Row>')
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    return "\n".join(lines)


class StagedRaster:
    """A GeoTIFF written under a temporary name beside ``target``; :meth:`commit` turns it
    into a COG (or keeps it as it is) and renames it; :meth:`discard` removes what exists."""

    def __init__(self, target: Path, profile: dict[str, Any], *, cog: bool, resampling: str):
        rio = require_rasterio()
        self.target = target
        self.cog = cog
        self.resampling = resampling
        self.sidecar: str | None = None
        self.temporaries = [temporary_beside(target)]
        self.dataset = rio.open(self.temporaries[0], "w", driver="GTiff", **profile)

    def commit(self) -> None:
        import rasterio.shutil

        self.dataset.close()
        final = self.temporaries[0]
        if self.cog:
            final = temporary_beside(self.target)
            self.temporaries.append(final)
            rasterio.shutil.copy(
                self.temporaries[0],
                final,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=256,
                RESAMPLING=self.resampling,
                BIGTIFF="IF_SAFER",
            )
        sidecar = Path(f"{self.target}.aux.xml")
        if self.sidecar is not None:
            write_bytes_atomic(sidecar, self.sidecar.encode("utf-8"))
        else:
            sidecar.unlink(missing_ok=True)
        os.replace(final, self.target)
        self.discard()

    def discard(self) -> None:
        if not self.dataset.closed:
            self.dataset.close()
        for path in self.temporaries:
            path.unlink(missing_ok=True)
            Path(f"{path}.aux.xml").unlink(missing_ok=True)


def class_map_profile(grid: TileGrid, crs: Any, transform: Any, count: int, dtype: str) -> dict:
    return {
        "width": grid.cols,
        "height": grid.rows,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": grid.transform(transform),
        "compress": "deflate",
        "blockysize": 1,
    }


def write_class_row(dst: Any, row: TileRow) -> None:
    from rasterio.windows import Window

    values = np.where(row.classified, row.indices, CLASS_NODATA).astype(np.uint8)
    dst.write(values[None, None, :], window=Window(0, row.row, len(values), 1))


def write_probability_row(dst: Any, row: TileRow, fmt: ProbabilityFormat) -> None:
    from rasterio.windows import Window

    values = np.concatenate([row.probabilities.T, row.valid[None, :]])
    if fmt == "uint8":
        scaled = np.round(np.nan_to_num(values, nan=0.0) * UINT8_SCALE)
        values = np.where(np.isnan(values), 255, scaled).astype(np.uint8)
    dst.write(values[:, None, :], window=Window(0, row.row, values.shape[1], 1))


class Mosaic:
    """Full-resolution CAM mosaic written window by window: each tile's raw CAM resized to
    the tile (bilinear), overlapping tiles averaged; NaN where no classified tile covers a
    pixel and at invalid pixels.

    Windows are written (and compressed) by a thread while the model goes on; at most one
    window waits for it."""

    def __init__(self, dst: Any, grid: TileGrid, cam_shape: tuple[int, int]) -> None:
        self.dst = dst
        self.grid = grid
        self.sums = np.zeros((grid.tile, grid.padded_width), np.float32)
        self.counts = np.zeros((grid.tile, grid.padded_width), np.uint16)
        self.valid = np.zeros((grid.tile, grid.padded_width), bool)
        self.rows_up = _bilinear_matrix(cam_shape[0], grid.tile)
        self.cols_up = _bilinear_matrix(cam_shape[1], grid.tile).T
        self.written = 0  # scene rows [0, written) are handed to the writer
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="scenecam-write")
        self._pending: Future[None] | None = None

    def add(self, row: TileRow) -> None:
        grid = self.grid
        top = row.row * grid.stride
        if row.cams is None:
            raise ValueError("the mosaic needs rows classified with explain options")
        for c in np.flatnonzero(row.classified):
            x = c * grid.stride
            self.sums[:, x : x + grid.tile] += self.rows_up @ row.cams[c] @ self.cols_up
            self.counts[:, x : x + grid.tile] += 1
        self.valid |= row.mask  # overlapping rows of tiles read the same pixels
        last = row.row == grid.rows - 1
        self._emit(top, grid.height if last else min(top + grid.stride, grid.height))
        keep = grid.tile - grid.stride
        for buffer in (self.sums, self.counts, self.valid):
            if keep > 0:  # rows the next tile row still adds to move up
                buffer[:keep] = buffer[grid.stride :]
            buffer[keep:] = 0

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
        y = self.written
        if y >= end:
            return
        rows = slice(y - top, end - top)
        sums, counts = self.sums[rows, :width], self.counts[rows, :width]
        with np.errstate(invalid="ignore", divide="ignore"):
            block = np.where((counts > 0) & self.valid[rows, :width], sums / counts, np.nan)
        self._wait()
        self._pending = self._writer.submit(
            self.dst.write, block.astype(np.float32)[None], window=Window(0, y, width, end - y)
        )
        self.written = end


def _bilinear_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) weights of a bilinear resize along one axis, pixel centres aligned as in
    OpenCV's INTER_LINEAR (edges clamped): ``M @ a`` resizes ``a`` from ``size`` to ``out``."""
    centres = (np.arange(out) + 0.5) * (size / out) - 0.5
    centres = np.clip(centres, 0, size - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, size - 1)
    frac = (centres - low).astype(np.float32)
    matrix = np.zeros((out, size), np.float32)
    matrix[np.arange(out), low] += 1 - frac
    matrix[np.arange(out), high] += frac
    return matrix
