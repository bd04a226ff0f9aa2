"""Reading a scene: bands, validity masks and the stretch to the model's uint8 pixels.

**Validity.** A pixel is valid when GDAL's mask says so in every chosen band (the nodata
value, an alpha band or an internal/external mask: ``read_masks``) and its values are finite
(NaN in a float scene is invalid even without a nodata value). Pixels beyond the scene's
right and bottom edges (padding of the edge tiles) are invalid too.

**Stretch.** The model takes uint8 pixels. How a band's values become 0..255:

- ``"model"`` (the default): the per-band range the model was trained with, when its
  manifest records one (``input.band_stretch``: ``{"low": [...], "high": [...]}``, one value per
  channel in the model's channel order); without it, 8-bit bands are used as they are and
  other data types are stretched between per-scene percentiles (2 and 98).
- ``(low, high)`` percentiles: per band, per scene, from a decimated read of the valid pixels
  (the scene's overviews when it has them).
- ``None``: values clipped to 0..255.

Needs rasterio (``pip install 'scenecam-edge[geo]'``), imported when a scene is opened.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeAlias

import numpy as np

from ..bundle import Manifest
from ..errors import BundleError, ImageError, MissingExtraError
from .grid import TileGrid

log = logging.getLogger(__name__)

#: Default percentiles of the per-scene stretch of non-8-bit data.
DEFAULT_PERCENTILES = (2.0, 98.0)
#: The longest side of the decimated read the stretch's percentiles come from.
STATS_SIDE = 1024
#: GDAL's block cache while tiling, in MB: reads and writes stream through it.
GDAL_CACHE_MB = 64

#: "model", (low, high) percentiles, or None (clip): see the module's documentation.
StretchChoice: TypeAlias = Literal["model"] | tuple[float, float] | None


def require_rasterio() -> Any:
    """The rasterio module, or :class:`MissingExtraError` naming the ``geo`` extra."""
    try:
        import rasterio
    except ImportError:
        raise MissingExtraError("rasterio", "geo", "reading and writing rasters") from None
    return rasterio


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """'4,3,2,8' -> (4, 3, 2, 8); None stays None (the default bands)."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"bands must be comma-separated band numbers, not {text!r}") from None


@dataclass(frozen=True)
class Stretch:
    """A linear map of each band from [low, high] to [0, 255], clipped; ``source`` says
    where the range came from ("model", "percentiles")."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    source: str = "percentiles"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, B) numbers to uint8 (NaN becomes 0; masks say which pixels are valid)."""
        low = np.asarray(self.low, dtype=np.float32)
        span = np.maximum(np.asarray(self.high, dtype=np.float32) - low, 1e-12)
        scaled = (pixels.astype(np.float32) - low) * (255.0 / span)
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def model_stretch(manifest: Manifest) -> Stretch | None:
    """The per-band range the model was trained with (manifest ``input.band_stretch``), if any."""
    raw = manifest.raw.get("input", {})
    scaling = raw.get("band_stretch") if isinstance(raw, dict) else None
    if scaling is None:
        return None
    channels = manifest.input.channels
    try:
        low = tuple(float(v) for v in scaling["low"])
        high = tuple(float(v) for v in scaling["high"])
    except (KeyError, TypeError, ValueError):
        raise BundleError(
            manifest.name, "input.band_stretch needs 'low' and 'high' lists"
        ) from None
    if (
        len(low) != channels
        or len(high) != channels
        or any(h <= lo for lo, h in zip(low, high, strict=False))
    ):
        raise BundleError(
            manifest.name, f"input.band_stretch needs {channels} low < high pairs, got {scaling}"
        )
    return Stretch(low, high, "model")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Scene:
    """An open raster, its chosen bands and stretch: reads rows of tiles with their masks.

    ``channels`` is what the model takes; ``bands`` (1-based, in the model's channel order)
    default to the first ``channels`` bands (band 1 repeated for a 3-channel model on a
    single-band scene).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        channels: int,
        bands: Sequence[int] | None = None,
        stretch: StretchChoice = "model",
        scaling: Stretch | None = None,
    ) -> None:
        rio = require_rasterio()
        self.path = os.fspath(path)
        self.channels = channels
        self._env = ExitStack()
        self._env.enter_context(rio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
                self.dataset = self._env.enter_context(rio.open(self.path))
            self.bands = self._check_bands(bands)
            self.stretch = self._plan_stretch(stretch, scaling)
            flags = [self.dataset.mask_flag_enums[b - 1] for b in self.bands]
            self.masked = any(rio.enums.MaskFlags.all_valid not in f for f in flags)
            self.floating = any(self.dataset.dtypes[b - 1].startswith("float") for b in self.bands)
        except _read_errors(rio) as exc:
            self._env.close()
            raise ImageError(self.path, first_line(exc)) from None
        except BaseException:
            self._env.close()
            raise

    def __enter__(self) -> Scene:
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

    @property
    def height(self) -> int:
        return int(self.dataset.height)

    @property
    def width(self) -> int:
        return int(self.dataset.width)

    def pixel_area(self) -> tuple[float, str]:
        """One pixel's area and its unit ("metre^2", "degree^2", or "pixel" when the scene
        is not georeferenced)."""
        a, b, _, d, e, _ = tuple(self.dataset.transform)[:6]
        crs = self.dataset.crs
        if crs is None:
            return 1.0, "pixel"
        unit = "degree" if crs.is_geographic else (crs.linear_units or "unit")
        return abs(a * e - b * d), f"{unit}^2"

    # -- planning ----------------------------------------------------------------------------

    def _check_bands(self, bands: Sequence[int] | None) -> tuple[int, ...]:
        count, channels = self.dataset.count, self.channels
        if bands is None:
            if count >= channels:
                return tuple(range(1, channels + 1))
            if channels == 3:
                return (1,)
            raise ValueError(
                f"the model takes {channels} bands and the scene has {count}: choose --bands"
            )
        chosen = tuple(bands)
        bad = [b for b in chosen if not 1 <= b <= count]
        if bad:
            raise ValueError(f"the scene has bands 1..{count}; no band {bad[0]}")
        allowed = {1, 3} if channels == 3 else {channels}
        if len(chosen) not in allowed:
            raise ValueError(
                f"the model takes {channels} channel(s): choose "
                f"{' or '.join(str(n) for n in sorted(allowed))} bands, not {len(chosen)}"
            )
        return chosen

    def _plan_stretch(self, choice: StretchChoice, scaling: Stretch | None) -> Stretch | None:
        if choice == "model":
            if scaling is not None:
                if len(self.bands) != len(scaling.low):  # one band for a 3-channel model
                    return Stretch(scaling.low[:1], scaling.high[:1], scaling.source)
                return scaling
            dtypes = {self.dataset.dtypes[b - 1] for b in self.bands}
            return None if dtypes == {"uint8"} else self._percentiles(DEFAULT_PERCENTILES)
        if choice is None:
            return None
        return self._percentiles(choice)

    def _percentiles(self, percentiles: tuple[float, float]) -> Stretch:
        low_p, high_p = percentiles
        if not 0 <= low_p < high_p <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, not {percentiles}")
        from rasterio.enums import Resampling

        factor = max(1, math.ceil(max(self.height, self.width) / STATS_SIDE))
        shape = (len(self.bands), max(1, self.height // factor), max(1, self.width // factor))
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
        log.info("%s: stretch %s -> 0..255 (every %d px)", self.path, stretch, factor)
        return stretch

    # -- reading -----------------------------------------------------------------------------

    def read_row(self, grid: TileGrid, row: int) -> tuple[np.ndarray, np.ndarray]:
        """One row of tiles across the padded width: uint8 pixels (tile, padded width,
        channels) and the valid mask (tile, padded width); padding is 0 and invalid."""
        rio = require_rasterio()
        from rasterio.windows import Window

        top, bottom = grid.row_span(row)
        window = Window(0, top, self.width, bottom - top)
        try:
            raw = self.dataset.read(list(self.bands), window=window)
            masks = (
                self.dataset.read_masks(list(self.bands), window=window) if self.masked else None
            )
        except _read_errors(rio) as exc:
            raise ImageError(self.path, f"cannot read tile row {row}: {first_line(exc)}") from None
        data = np.moveaxis(raw, 0, -1)
        valid = np.ones(data.shape[:2], bool) if masks is None else (masks > 0).any(axis=0)
        if self.floating:
            valid &= np.isfinite(data).all(axis=2)
        if self.stretch is not None:
            pixels = self.stretch.apply(data)
        else:
            pixels = np.clip(np.nan_to_num(data), 0, 255).astype(np.uint8, copy=False)
        if pixels.shape[2] == 1 and self.channels == 3:
            pixels = np.repeat(pixels, 3, axis=2)
        out = np.zeros((grid.tile, grid.padded_width, pixels.shape[2]), np.uint8)
        out_valid = np.zeros((grid.tile, grid.padded_width), bool)
        out[: bottom - top, : self.width] = pixels
        out_valid[: bottom - top, : self.width] = valid
        return out, out_valid


def fill_invalid(tile: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A copy of ``tile`` (H, W, C) whose invalid pixels hold the mean of its valid pixels,
    band by band: a neutral fill that adds no edges or colours of its own."""
    out = tile.copy()
    mean = tile[valid].mean(axis=0)
    out[~valid] = np.round(mean).astype(np.uint8)
    return out


def _read_errors(rio: Any) -> tuple[type[BaseException], ...]:
    """What GDAL raises for a file it cannot open or read (truncated, corrupt, missing)."""
    from rasterio._err import CPLE_BaseError

    return (rio.errors.RasterioError, CPLE_BaseError)
