"""Reading a scene: the rows of tiles of a raster, with their validity masks.

Bands, masks and the stretch to the model's uint8 pixels come from
:class:`scenecam_edge.rasters.Raster` (by the rules of :mod:`scenecam_edge.bands`), which the
API and ``classify`` read chips with too, so a chip gives the same pixels through either.
Pixels beyond the scene's right and bottom edges (padding of the edge tiles) are invalid.

Needs rasterio (``pip install 'scenecam-edge[geo]'``), imported when a scene is opened.
"""

from __future__ import annotations

import numpy as np

from ..bands import (
    DEFAULT_PERCENTILES,
    Stretch,
    StretchChoice,
    fill_invalid,
    first_line,
    model_stretch,
    parse_bands,
    require_rasterio,
)
from ..rasters import GDAL_CACHE_MB, STATS_SIDE, Raster
from .grid import TileGrid

__all__ = [
    "DEFAULT_PERCENTILES",
    "GDAL_CACHE_MB",
    "STATS_SIDE",
    "Scene",
    "Stretch",
    "StretchChoice",
    "fill_invalid",
    "first_line",
    "model_stretch",
    "parse_bands",
    "require_rasterio",
]


class Scene(Raster):
    """An open scene, its chosen bands and stretch: reads rows of tiles with their masks."""

    def pixel_area(self) -> tuple[float, str]:
        """One pixel's area and its unit ("metre^2", "degree^2", or "pixel" when the scene
        is not georeferenced)."""
        a, b, _, d, e, _ = tuple(self.dataset.transform)[:6]
        crs = self.dataset.crs
        if crs is None:
            return 1.0, "pixel"
        unit = "degree" if crs.is_geographic else (crs.linear_units or "unit")
        return abs(a * e - b * d), f"{unit}^2"

    def read_row(self, grid: TileGrid, row: int) -> tuple[np.ndarray, np.ndarray]:
        """One row of tiles across the padded width: uint8 pixels (tile, padded width,
        channels) and the valid mask (tile, padded width); padding is 0 and invalid."""
        from rasterio.windows import Window

        top, bottom = grid.row_span(row)
        window = Window(0, top, self.width, bottom - top)
        pixels, valid = self.read(window, f" tile row {row}")
        out = np.zeros((grid.tile, grid.padded_width, pixels.shape[2]), np.uint8)
        out_valid = np.zeros((grid.tile, grid.padded_width), bool)
        out[: bottom - top, : self.width] = pixels
        out_valid[: bottom - top, : self.width] = valid
        return out, out_valid
