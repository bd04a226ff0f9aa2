"""The Grad-CAM mosaic at the scene's full resolution, written window by window."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .grid import TileGrid
from .tiler import TileRow


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
            _write, self.dst, block.astype(np.float32)[None], Window(0, y, width, end - y)
        )
        self.written = end


def _write(dst: Any, block: np.ndarray, window: Any) -> None:
    """One window, written in the writer thread under rasterio's error handling (GDAL's
    handlers are per thread: without it, GDAL prints its errors raw on stderr)."""
    import rasterio

    with rasterio.Env():
        dst.write(block, window=window)


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
