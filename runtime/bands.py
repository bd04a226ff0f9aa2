"""Bands: the rules that turn any number of band values into a model's uint8 pixels.

One code path turns band values into the uint8 pixels a model takes, for ``tiles`` (a scene,
window by window: :mod:`scenecam_edge.tiles.raster`) and for stills (the API, ``classify``,
``batch``, ``evaluate``: :func:`scenecam_edge.rasters.read_still` for files and
:func:`still_from_values` for arrays), so the same pixels give the same answer in both. Files
are read in :mod:`scenecam_edge.rasters`; this module holds the rules and needs no rasterio.

**Validity.** A pixel is valid when GDAL's mask says so in any chosen band (the nodata
value, an alpha band or an internal/external mask: ``read_masks``; GDAL's dataset-mask rule)
and its values are finite in every band
(NaN in a float raster is invalid even without a nodata value).

**Stretch.** The model takes uint8 pixels. How a band's values become 0..255:

- ``"model"`` (the default): the per-band range the model was trained with, when its
  manifest records one (``input.band_stretch``: ``{"low": [...], "high": [...]}``, one value per
  channel in the model's channel order); without it, 8-bit bands are used as they are and
  other data types are stretched between the raster's own percentiles (2 and 98).
- ``(low, high)`` percentiles: per band, per raster, from a decimated read of the valid
  pixels (the raster's overviews when it has them).
- ``None``: values clipped to 0..255.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np

from .bundle import Manifest
from .errors import BundleError, ImageError, MissingExtraError

log = logging.getLogger(__name__)

#: Default percentiles of the per-raster stretch of non-8-bit data.
DEFAULT_PERCENTILES = (2.0, 98.0)
#: File names read with rasterio when the model takes bands rather than photos.
RASTER_SUFFIXES = frozenset({".tif", ".tiff"})

#: "model", (low, high) percentiles, None (clip), or a fixed :class:`Stretch` (one scene's,
#: given to every worker that reads a block of it): see the module's documentation.
StretchChoice: TypeAlias = "Literal['model'] | tuple[float, float] | Stretch | None"


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


#: Stretch ranges within this are mapped in float32 (see :meth:`Stretch.apply`).
_FLOAT32_SAFE = 1e30


@dataclass(frozen=True)
class Stretch:
    """A linear map of each band from [low, high] to [0, 255], clipped; ``source`` says
    where the range came from ("model", "percentiles")."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    source: str = "percentiles"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, B) numbers to uint8 (NaN becomes 0; masks say which pixels are valid).

        In float32 (training and serving share these numbers), unless the stretch's range
        itself is beyond what float32 holds (float64 values near 1e308, whose differences
        became inf - inf, a black scene): then in float64 and by halves (x/2 - low/2 over
        high/2 - low/2), which overflows nowhere in float64's range. A value outside the
        range saturates, silently."""
        if max(map(abs, (*self.low, *self.high))) > _FLOAT32_SAFE:
            low = np.asarray(self.low, np.float64) * 0.5
            half_span = np.maximum(np.asarray(self.high, np.float64) * 0.5 - low, 1e-12)
            with np.errstate(over="ignore", invalid="ignore"):
                scaled = (pixels.astype(np.float64) * 0.5 - low) * (255.0 / half_span)
        else:
            low32 = np.asarray(self.low, dtype=np.float32)
            span32 = np.maximum(np.asarray(self.high, dtype=np.float32) - low32, 1e-12)
            with np.errstate(over="ignore", invalid="ignore"):
                scaled = (pixels.astype(np.float32) - low32) * (255.0 / span32)
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
        with np.errstate(over="ignore", invalid="ignore"):
            low, high = np.percentile(values, list(percentiles))
        if not np.isfinite([low, high]).all():  # interpolating near 1e308 overflowed
            low, high = np.percentile(values, list(percentiles), method="nearest")
        lows.append(float(low))
        if high <= low:  # a constant band: a span of 1 (the next float where 1 is lost)
            high = low + 1.0 if low + 1.0 > low else np.nextafter(low, np.inf)
        highs.append(float(high))
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


# -- stills: one picture's bands, for the API and classify ------------------------------------


def still_from_values(
    values: np.ndarray, channels: int, scaling: Stretch | None, name: str
) -> np.ndarray:
    """Band values (H, W) or (H, W, B) of any number type as uint8 (H, W, channels), by the
    rules :class:`~scenecam_edge.rasters.Raster` follows for files: the model's stretch when
    it records one, else 8-bit values as they are and others between their own 2nd and 98th
    percentiles; non-finite values are invalid and filled as ``tiles`` fills them."""
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
    return filled(name, pixels, valid)


def check_count(name: str, count: int, channels: int) -> None:
    """Refuse an input of ``count`` bands for a model of ``channels`` (one band is repeated
    for a 3-channel model, as ``tiles`` does)."""
    if count != channels and not (count == 1 and channels == 3):
        raise ImageError(
            name, f"has {count} band{'s' if count != 1 else ''}, the model takes {channels}"
        )


def filled(name: str, pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    if valid is None or valid.all():
        return np.ascontiguousarray(pixels)
    if not valid.any():
        raise ImageError(name, "no valid pixels (all nodata, masked or NaN)")
    return fill_invalid(pixels, valid)
