"""The tile grid over a scene: where each tile lies, which scene pixels each output cell
stands for, and the output's georeferencing.

Tiles of ``tile`` pixels start every ``stride`` pixels. The grid covers the whole scene: the
last row and column of tiles may cross the bottom and right edges, and their pixels beyond
the edge are padded (see :mod:`.raster`), so every pixel of the scene lies in some tile.
Each output pixel (a *cell*) is the ``stride`` x ``stride`` square at the centre of its tile;
the cells of the first and last rows and columns stretch to the scene's edges, so the cells
partition the scene (each scene pixel belongs to exactly one cell: class areas add up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` pixels every ``stride`` pixels over a ``height`` x ``width`` scene."""

    height: int
    width: int
    tile: int
    stride: int

    def __post_init__(self) -> None:
        if self.tile < 1 or self.stride < 1:
            raise ValueError(f"tile and stride must be at least 1, not {self.tile}, {self.stride}")
        if self.stride > self.tile:
            raise ValueError(
                f"the stride ({self.stride} px) is larger than the tile ({self.tile} px): "
                "pixels between tiles would never be classified"
            )
        if self.height < 1 or self.width < 1:
            raise ValueError(f"the scene is empty ({self.width} x {self.height} px)")

    @property
    def rows(self) -> int:
        return _count(self.height, self.tile, self.stride)

    @property
    def cols(self) -> int:
        return _count(self.width, self.tile, self.stride)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def padded_width(self) -> int:
        """Width of a row of tiles, padding included: ``(cols - 1) * stride + tile``."""
        return (self.cols - 1) * self.stride + self.tile

    @property
    def padded_height(self) -> int:
        return (self.rows - 1) * self.stride + self.tile

    @property
    def offset(self) -> int:
        """Pixels from a tile's edge to its cell's edge."""
        return (self.tile - self.stride) // 2

    def row_span(self, row: int) -> tuple[int, int]:
        """Scene rows [top, bottom) of tile row ``row`` that lie inside the scene."""
        top = row * self.stride
        return top, min(top + self.tile, self.height)

    def cell_span(self, index: int, count: int, size: int) -> tuple[int, int]:
        """Scene pixels [start, stop) of cell ``index`` of ``count`` along a side of ``size``."""
        start = 0 if index == 0 else min(index * self.stride + self.offset, size)
        stop = size if index == count - 1 else min((index + 1) * self.stride + self.offset, size)
        return start, stop

    def cell_rows(self, row: int) -> tuple[int, int]:
        return self.cell_span(row, self.rows, self.height)

    def cell_cols(self, col: int) -> tuple[int, int]:
        return self.cell_span(col, self.cols, self.width)

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


def _count(size: int, tile: int, stride: int) -> int:
    """Tiles needed along a side so that the last one reaches the edge."""
    return 1 if size <= tile else math.ceil((size - tile) / stride) + 1
