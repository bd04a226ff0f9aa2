"""GeoTIFF chips for training: class folders of ``.tif`` files with any number of bands, 8- or
16-bit (or float), read with rasterio.

The chips' values become uint8 pixels through one per-band stretch computed on the training
set (the 2nd and 98th percentiles of every chip's valid values, band by band), so the same
ground gets the same pixels in every chip. The stretch is recorded in the bundle's manifest
(``input.band_stretch``), and ``scenecam-edge tiles`` applies it to scenes by default:
serving sees what training saw.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from scenecam_edge.dataset import LabelledImages, list_folder, load_dataset
from scenecam_edge.errors import ImageError, MissingExtraError
from scenecam_edge.images import resize_to
from scenecam_edge.tiles import Stretch, require_rasterio

log = logging.getLogger(__name__)

RASTER_SUFFIXES = frozenset({".tif", ".tiff"})
#: Percentiles of the training set's values that map to 0 and 255.
PERCENTILES = (2.0, 98.0)
#: Values sampled per chip for the percentiles (memory stays small for large sets).
SAMPLE_PER_CHIP = 4096


def wants_rasterio(paths: list[Path], channels: int) -> bool:
    """Read these files as raster chips: all are TIFFs and either the model takes other than
    1 or 3 channels, or the first chip is not 8-bit (Pillow reads neither)."""
    if not paths or any(p.suffix.lower() not in RASTER_SUFFIXES for p in paths):
        return False
    if channels not in (1, 3):
        return True
    try:
        rio = require_rasterio()
    except MissingExtraError:
        return False
    try:
        with rio.open(paths[0]) as src:
            return set(src.dtypes) != {"uint8"}
    except rio.errors.RasterioError:
        return False


def read_chip(path: Path, channels: int) -> np.ndarray:
    """A chip's bands as (H, W, channels) in its own data type; NaN/nodata become NaN."""
    rio = require_rasterio()
    try:
        with rio.open(path) as src:
            if src.count != channels:
                raise ImageError(path, f"has {src.count} bands, the model takes {channels}")
            data = src.read(masked=True).astype(np.float32)
    except rio.errors.RasterioError as exc:
        raise ImageError(path, str(exc).splitlines()[0]) from None
    return np.moveaxis(data.filled(np.nan), 0, -1)


def training_stretch(chips: list[np.ndarray], seed: int = 0) -> Stretch:
    """The per-band 2-98 percentile stretch of the chips' valid values."""
    rng = np.random.default_rng(seed)
    bands = chips[0].shape[2]
    samples: list[np.ndarray] = []
    for chip in chips:
        flat = chip.reshape(-1, bands)
        take = rng.choice(len(flat), size=min(len(flat), SAMPLE_PER_CHIP), replace=False)
        samples.append(flat[take])
    values = np.concatenate(samples)
    lows, highs = [], []
    for b in range(bands):
        column = values[:, b][np.isfinite(values[:, b])]
        low, high = np.percentile(column, PERCENTILES) if column.size else (0.0, 255.0)
        lows.append(float(low))
        highs.append(float(high) if high > low else float(low) + 1.0)
    return Stretch(tuple(lows), tuple(highs), "model")


def stretch_record(stretch: Stretch) -> dict[str, list[float]]:
    """The manifest's ``input.band_stretch``."""
    return {"low": list(stretch.low), "high": list(stretch.high)}


def load_training_data(
    source: str | os.PathLike[str],
    size: tuple[int, int],
    channels: int,
    cache_dir: Path | None = None,
) -> LabelledImages:
    """The training set: class folders of GeoTIFF chips (:func:`load_chips`) where the files
    call for rasterio, otherwise photos or an ``.npz`` through the runtime's reader."""
    path = Path(source)
    if path.is_dir():
        names, items = list_folder(path)
        if wants_rasterio([p for p, _ in items], channels):
            return load_chips(names, items, size, channels)
    return load_dataset(path, size, channels, cache_dir=cache_dir)


def load_chips(
    names: list[str], items: list[tuple[Path, int]], size: tuple[int, int], channels: int
) -> LabelledImages:
    """GeoTIFF chips (any bands, any data type), stretched to uint8 by the whole set's
    per-band percentiles; the stretch travels with the data (``band_stretch``)."""
    raws: list[np.ndarray] = []
    keep: list[tuple[Path, int]] = []
    skipped: list[tuple[str, str]] = []
    for path, label in items:
        try:
            raws.append(read_chip(path, channels))
            keep.append((path, label))
        except ImageError as exc:
            skipped.append((str(path), exc.reason))
    if not raws:
        raise ValueError("no readable chips in the class folders")
    stretch = training_stretch(raws)
    return LabelledImages(
        np.stack([resize_to(stretch.apply(raw), *size) for raw in raws]),
        np.array([label for _, label in keep], dtype=np.int64),
        names,
        [str(p) for p, _ in keep],
        skipped,
        band_stretch=stretch_record(stretch),
    )
