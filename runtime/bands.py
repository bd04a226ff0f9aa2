"""Bands: reading rasters with any number of bands, their validity and the stretch to uint8.

One code path turns band values into the uint8 pixels a model takes, for ``tiles`` (a scene,
window by window: :mod:`scenecam_edge.tiles.raster`) and for stills (the API, ``classify``,
``batch``, ``evaluate``: :func:`read_still` and :func:`still_from_values`), so the same pixels
give the same answer in both.

**Validity.** A pixel is valid when GDAL's mask says so in every chosen band (the nodata
value, an alpha band or an internal/external mask: ``read_masks``) and its values are finite
(NaN in a float raster is invalid even without a nodata value).

**Stretch.** The model takes uint8 pixels. How a band's values become 0..255:

- ``"model"`` (the default): the per-band range the model was trained with, when its
  manifest records one (``input.band_stretch``: ``{"low": [...], "high": [...]}``, one value per
  channel in the model's channel order); without it, 8-bit bands are used as they are and
  other data types are stretched between the raster's own percentiles (2 and 98).
- ``(low, high)`` percentiles: per band, per raster, from a decimated read of the valid
  pixels (the raster's overviews when it has them).
- ``None``: values clipped to 0..255.

Needs rasterio (``pip install 'scenecam-edge[geo]'``) for files, imported when one is opened.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeAlias

import numpy as np

from .bundle import Manifest
from .errors import BundleError, ImageError, MissingExtraError

log = logging.getLogger(__name__)

#: Default percentiles of the per-raster stretch of non-8-bit data.
DEFAULT_PERCENTILES = (2.0, 98.0)
#: The longest side of the decimated read the stretch's percentiles come from.
STATS_SIDE = 1024
#: GDAL's block cache while reading, in MB: reads and writes stream through it.
GDAL_CACHE_MB = 64
#: File names read with rasterio when the model takes bands rather than photos.
RASTER_SUFFIXES = frozenset({".tif", ".tiff"})

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


def is_raster_model(channels: int, scaling: Stretch | None) -> bool:
    """Whether a model takes band values rather than photos: other than 1 or 3 channels, or
    a recorded ``band_stretch`` (it was trained on raster chips)."""
    return channels not in (1, 3) or scaling is not None


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

    def first(self, count: int) -> Stretch:
        """The stretch of the first ``count`` bands (one band for a 3-channel model)."""
        return (
            self
            if count == len(self.low)
            else Stretch(self.low[:count], self.high[:count], self.source)
        )


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


def rgb_bands(manifest: Manifest) -> tuple[int, int, int]:
    """The model's channels (0-based) that pictures show as red, green and blue: the
    manifest's ``input.rgb_bands`` (three 1-based channel numbers, e.g. ``[3, 2, 1]`` for a
    model taking blue, green, red, near infrared), else the first three (the order ``tiles
    --bands`` documents: red, green, blue, then the rest); a 1- or 2-channel model shows its
    first channel as grey."""
    channels = manifest.input.channels
    raw = manifest.raw.get("input", {})
    named = raw.get("rgb_bands") if isinstance(raw, dict) else None
    if named is None:
        return (0, 1, 2) if channels >= 3 else (0, 0, 0)
    if (
        not isinstance(named, list)
        or len(named) != 3
        or not all(isinstance(b, int) and 1 <= b <= channels for b in named)
    ):
        raise BundleError(
            manifest.name, f"input.rgb_bands needs three channel numbers 1..{channels}, got {named}"
        )
    return (named[0] - 1, named[1] - 1, named[2] - 1)


def percentile_stretch(bands: Iterable[np.ndarray], percentiles: tuple[float, float]) -> Stretch:
    """The stretch between ``percentiles`` of each band's values (NaN ignored; a band with no
    value keeps 0..255, a constant band gets a span of 1)."""
    lows, highs = [], []
    for band in bands:
        values = np.asarray(band, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            lows.append(0.0)
            highs.append(255.0)
            continue
        low, high = np.percentile(values, list(percentiles))
        lows.append(float(low))
        highs.append(float(high) if high > low else float(low) + 1.0)
    return Stretch(tuple(lows), tuple(highs))


def check_percentiles(percentiles: tuple[float, float]) -> None:
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, not {percentiles}")


def fill_invalid(tile: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A copy of ``tile`` (H, W, C) whose invalid pixels hold the mean of its valid pixels,
    band by band: a neutral fill that adds no edges or colours of its own."""
    out = tile.copy()
    mean = tile[valid].mean(axis=0)
    out[~valid] = np.round(mean).astype(np.uint8)
    return out


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Raster:
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

    def __enter__(self) -> Raster:
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


# -- stills: one picture's bands, for the API and classify ------------------------------------


def read_still(
    path: str | os.PathLike[str], channels: int, scaling: Stretch | None, max_pixels: int
) -> np.ndarray:
    """A raster file as one picture of uint8 (H, W, channels): its bands must be the model's
    (one band for a 3-channel model is repeated, as ``tiles`` does); the stretch, masks and
    fill of invalid pixels are those of ``tiles``."""
    name = os.fspath(path)
    rio = require_rasterio()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
            with rio.open(name) as dataset:
                count, height, width = dataset.count, dataset.height, dataset.width
                dtypes = tuple(dataset.dtypes)
    except _read_errors(rio) as exc:
        raise ImageError(name, first_line(exc)) from None
    check_count(name, count, channels)
    if any(kind.startswith("complex") for kind in dtypes):
        raise ImageError(name, f"complex bands ({dtypes[0]}) are not pixel values")
    if width * height > max_pixels:
        raise ImageError(
            name, f"image declares {width}x{height} pixels, over the limit of {max_pixels}"
        )
    with Raster(name, channels=channels, scaling=scaling) as raster:
        pixels, valid = raster.read()
    return _filled(name, pixels, valid)


def still_from_values(
    values: np.ndarray, channels: int, scaling: Stretch | None, name: str
) -> np.ndarray:
    """Band values (H, W) or (H, W, B) of any number type as uint8 (H, W, channels), by the
    rules of :class:`Raster`: the model's stretch when it records one, else 8-bit values as
    they are and others between their own 2nd and 98th percentiles; non-finite values are
    invalid and filled as ``tiles`` fills them."""
    if values.ndim == 2:
        values = values[:, :, None]
    if values.ndim != 3 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ImageError(
            name, f"arrays must have shape (H, W) or (H, W, bands), not {values.shape}"
        )
    if values.dtype.kind not in "uif":
        raise ImageError(name, f"arrays must hold numbers, not {values.dtype}")
    check_count(name, values.shape[2], channels)
    valid = np.isfinite(values).all(axis=2) if values.dtype.kind == "f" else None
    if scaling is not None:
        stretch: Stretch | None = scaling.first(values.shape[2])
    elif values.dtype == np.uint8:
        stretch = None
    else:
        kept = values if valid is None else values[valid]
        stretch = percentile_stretch(np.moveaxis(kept, -1, 0), DEFAULT_PERCENTILES)
    pixels = values if stretch is None else stretch.apply(values)
    if pixels.shape[2] == 1 and channels == 3:
        pixels = np.repeat(pixels, 3, axis=2)
    return _filled(name, pixels, valid)


def check_count(name: str, count: int, channels: int) -> None:
    """Refuse an input of ``count`` bands for a model of ``channels`` (one band is repeated
    for a 3-channel model, as ``tiles`` does)."""
    if count != channels and not (count == 1 and channels == 3):
        raise ImageError(
            name, f"has {count} band{'s' if count != 1 else ''}, the model takes {channels}"
        )


def _filled(name: str, pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    if valid is None or valid.all():
        return np.ascontiguousarray(pixels)
    if not valid.any():
        raise ImageError(name, "no valid pixels (all nodata, masked or NaN)")
    return fill_invalid(pixels, valid)


def _read_errors(rio: Any) -> tuple[type[BaseException], ...]:
    """What GDAL raises for a file it cannot open or read (truncated, corrupt, missing)."""
    from rasterio._err import CPLE_BaseError

    return (rio.errors.RasterioError, CPLE_BaseError)
