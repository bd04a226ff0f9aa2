"""Raster files with rasterio: a scene's windows and a chip as one picture.

:class:`Raster` opens a file, chooses its bands and plans the stretch by the rules of
:mod:`scenecam_edge.bands`, then reads windows as uint8 pixels with their validity masks;
``tiles`` reads a scene's rows of tiles through it (:class:`scenecam_edge.tiles.Scene`) and
the API reads a chip with :func:`read_still`, so both give the model the same pixels.

Needs rasterio (``pip install 'scenecam-edge[geo]'``), imported when a file is opened.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from .bands import (
    DEFAULT_PERCENTILES,
    Stretch,
    StretchChoice,
    check_count,
    check_percentiles,
    filled,
    first_line,
    percentile_stretch,
    require_rasterio,
)
from .closing import Closing
from .errors import ImageError
from .fileio import not_regular_reason
from .names import is_readable

log = logging.getLogger(__name__)

#: The longest side of the decimated read the stretch's percentiles come from.
STATS_SIDE = 1024
#: GDAL's block cache while reading, in MB: reads and writes stream through it.
GDAL_CACHE_MB = 64


class Raster(Closing):
    """An open raster, its chosen bands and stretch: reads windows as uint8 pixels and masks.

    ``channels`` is what the model takes; ``bands`` (1-based, in the model's channel order)
    default to the first ``channels`` bands (band 1 repeated for a 3-channel model on a
    single-band raster).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        channels: int,
        bands: Sequence[int] | None = None,
        stretch: StretchChoice = "model",
        scaling: Stretch | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        refuse_undecodable(self.path)
        if (reason := not_regular_reason(self.path)) is not None:  # GDAL would block on a FIFO
            raise ImageError(self.path, reason)
        rio = require_rasterio()
        self.channels = channels
        self._env = ExitStack()
        self._env.enter_context(rio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
                self.dataset = self._env.enter_context(rio.open(self.path))
            if max_pixels is not None and self.width * self.height > max_pixels:
                raise ImageError(
                    self.path,
                    f"scene declares {self.width}x{self.height} pixels, over the limit of "
                    f"{max_pixels} (--max-pixels)",
                )
            self.bands = self._check_bands(bands)
            self.stretch = self._plan_stretch(stretch, scaling)
            flags = [self.dataset.mask_flag_enums[b - 1] for b in self.bands]
            self.masked = any(rio.enums.MaskFlags.all_valid not in f for f in flags)
            self.floating = any(self.dataset.dtypes[b - 1].startswith("float") for b in self.bands)
        except _read_errors(rio) as exc:
            self._env.close()
            raise ImageError(self.path, open_reason(exc, self.path)) from None
        except BaseException:
            self._env.close()
            raise

    def close(self) -> None:
        self._env.close()

    @property
    def height(self) -> int:
        return int(self.dataset.height)

    @property
    def width(self) -> int:
        return int(self.dataset.width)

    def _check_bands(self, bands: Sequence[int] | None) -> tuple[int, ...]:
        count, channels = self.dataset.count, self.channels
        if bands is None:
            if count >= channels:
                return tuple(range(1, channels + 1))
            if channels == 3 and count == 1:  # one band: grey, repeated
                return (1,)
            also = " (--bands 1: band 1 as grey)" if channels == 3 else ""
            raise ValueError(
                f"the model takes {channels} bands and the scene has {count}: choose --bands{also}"
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
        if isinstance(choice, Stretch):
            return choice
        if choice == "model":
            if scaling is not None:
                return scaling.first(len(self.bands))
            dtypes = {self.dataset.dtypes[b - 1] for b in self.bands}
            return None if dtypes == {"uint8"} else self._percentiles(DEFAULT_PERCENTILES)
        if choice is None:
            return None
        return self._percentiles(choice)

    def _percentiles(self, percentiles: tuple[float, float]) -> Stretch:
        check_percentiles(percentiles)
        from rasterio.enums import Resampling

        factor = max(1, math.ceil(max(self.height, self.width) / STATS_SIDE))
        shape = (len(self.bands), max(1, self.height // factor), max(1, self.width // factor))
        sample = self.dataset.read(
            list(self.bands), out_shape=shape, masked=True, resampling=Resampling.nearest
        )
        stretch = percentile_stretch((np.ma.compressed(band) for band in sample), percentiles)
        log.info("%s: stretch %s -> 0..255 (every %d px)", self.path, stretch, factor)
        return stretch

    def read(self, window: Any = None, where: str = "") -> tuple[np.ndarray, np.ndarray]:
        """A window (rasterio's; None: everything) as uint8 pixels (h, w, channels) and its
        valid mask (h, w). ``where`` names the window in a read error."""
        rio = require_rasterio()
        try:
            raw = self.dataset.read(list(self.bands), window=window)
            masks = (
                self.dataset.read_masks(list(self.bands), window=window) if self.masked else None
            )
        except _read_errors(rio) as exc:
            raise ImageError(self.path, f"cannot read{where}: {first_line(exc)}") from None
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
        return pixels, valid


def refuse_undecodable(name: str) -> None:
    """GDAL takes names as UTF-8: one that is not (Latin-1 bytes, say) is one bad input."""
    if not is_readable(name):
        raise ImageError(name, "GDAL cannot open a file whose name is not UTF-8; rename it")


def read_still(
    path: str | os.PathLike[str], channels: int, scaling: Stretch | None, max_pixels: int
) -> np.ndarray:
    """A raster file as one picture of uint8 (H, W, channels): its bands must be the model's
    (one band for a 3-channel model is repeated, as ``tiles`` does); the stretch, masks and
    fill of invalid pixels are those of ``tiles``."""
    name = os.fspath(path)
    refuse_undecodable(name)
    rio = require_rasterio()
    if (reason := not_regular_reason(name)) is not None:
        raise ImageError(name, reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
            with rio.open(name) as dataset:
                count, height, width = dataset.count, dataset.height, dataset.width
                dtypes = tuple(dataset.dtypes)
    except _read_errors(rio) as exc:
        raise ImageError(name, open_reason(exc, name)) from None
    check_count(name, count, channels)
    if any(kind.startswith("complex") for kind in dtypes):
        raise ImageError(name, f"complex bands ({dtypes[0]}) are not pixel values")
    if width * height > max_pixels:
        raise ImageError(
            name, f"image declares {width}x{height} pixels, over the limit of {max_pixels}"
        )
    with Raster(name, channels=channels, scaling=scaling) as raster:
        pixels, valid = raster.read()
    return filled(name, pixels, valid)


def open_reason(exc: BaseException, name: str) -> str:
    """Why GDAL could not open ``name``, in the words the image readers use (``no such
    file``, ``not an image (unrecognised format)``, ``truncated or corrupt image (...)``)
    and without the file's name, which the error line gives first (GDAL and libtiff start
    with it, quoted or not, as given or as its last part)."""
    text = first_line(exc)
    names = dict.fromkeys((name, os.path.abspath(name), os.path.basename(name)))
    for shown_name in sorted(names, key=len, reverse=True):
        for form in (f"'{shown_name}' ", f"{shown_name}: ", f"'{shown_name}': "):
            if shown_name and text.startswith(form):
                text = text[len(form) :]
    if text.startswith("No such file or directory"):
        return "no such file"
    if text.startswith("not recognized as being in a supported file format"):
        return "not an image (unrecognised format)"
    if text.startswith("TIFF"):  # libtiff: a TIFF it cannot read (cut short, corrupt)
        said = re.sub(r"^(\w+):\s*", r"\1: ", text)  # TIFFReadDirectory:Failed -> ...: Failed
        return f"truncated or corrupt image ({said})"
    return text


def _read_errors(rio: Any) -> tuple[type[BaseException], ...]:
    """What GDAL raises for a file it cannot open or read (truncated, corrupt, missing)."""
    from rasterio._err import CPLE_BaseError

    return (rio.errors.RasterioError, CPLE_BaseError)
