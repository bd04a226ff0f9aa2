"""Calibration and comparison images for quantisation, decoded as training decodes them."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.dataset import default_cache_dir
from scenecam_edge.errors import ImageError
from scenecam_edge.evaluation import recorded_split
from scenecam_edge.images import load_image, resize_to
from scenecam_edge.sources import IMAGE_SUFFIXES

from .quant_settings import DEFAULT_CALIBRATION_IMAGES

log = logging.getLogger(__name__)

#: Where decoded data sets are cached (``dataset.default_cache_dir``: ``$SCENECAM_CACHE``, else
#: ``$XDG_CACHE_HOME/scenecam-edge``, else ``~/.cache/scenecam-edge``); training and quantize
#: share it, so reusing it saves decoding a folder again. The default as it read when the
#: process started (kept for callers of earlier versions; call ``default_cache_dir()`` for now).
DEFAULT_CACHE_DIR = default_cache_dir()


@dataclass
class CalibrationData:
    """Model-sized uint8 images: some to calibrate on, others to compare the models on."""

    calibration: np.ndarray
    evaluation: np.ndarray
    labels: np.ndarray | None  # of the evaluation images; None for an unlabelled folder
    info: dict[str, Any] = field(default_factory=dict)
    #: (path, reason) of each image that could not be read (the caller reports them)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: the cache file these images were read from or written to, and whether it was written
    cache: Path | None = None
    cache_written: bool = False


def calibration_data(
    source: str | os.PathLike[str],
    cam: SceneCam,
    images: int = DEFAULT_CALIBRATION_IMAGES,
    *,
    val_fraction: float | None = None,
    seed: int | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationData:
    """Calibration and comparison images from ``source``, decoded as training decodes them.

    A labelled data set (class-per-folder with the model's classes, or an ``.npz``) is split as
    training splits it (``stratified_split(labels, val_fraction, seed)``; by default the split
    the model's manifest records, else 0.15 and 1337): ``images`` picked at random (seeded)
    from the training side calibrate, the validation side is compared on. Any other folder of
    images is unlabelled: the first ``images`` of a seeded shuffle calibrate and the rest (or,
    when none are left, the same ones) are compared on.

    With ``cache_dir``, a labelled folder's chosen images (the calibration and comparison
    images, not the whole folder) are cached there, keyed by the folder's file list and
    these settings; a rerun reads them back without decoding. Unreadable images are listed
    in ``skipped``. ``progress`` hears (images decoded, total) as they are decoded.
    """
    from scenecam_edge.dataset import (
        align_classes,
        class_folders,
        load_dataset,
        stratified_split,
    )

    if images < 1:
        raise ValueError(f"calibration images must be at least 1, not {images}")
    val_fraction, seed = recorded_split(cam, val_fraction, seed)
    spec = cam.manifest.input
    size = (spec.height, spec.width)
    path = Path(source)
    rng = np.random.default_rng(seed)
    labelled = path.suffix == ".npz"
    if path.is_dir():
        try:
            folders = class_folders(path)
        except ValueError:
            folders = []
        # folders named like the model's classes (in any case; some classes may be missing)
        known = {name.casefold() for name in cam.class_names}
        labelled = bool(folders) and all(folder.casefold() in known for folder in folders)
        if folders and not labelled:
            log.warning(
                "%s: its folders %s are not the model's classes %s; using its images unlabelled "
                "(no accuracy)",
                path,
                folders,
                list(cam.class_names),
            )
    if labelled:
        cache = _cache_file(cache_dir, path, size, spec.channels, (val_fraction, seed, images))
        if cache is not None and cache.is_file():
            return _read_cache(cache, source, (val_fraction, seed))
        # every image, for training's split
        data = load_dataset(path, size, spec.channels, progress=progress)
        if path.is_dir():
            data = align_classes(data, cam.class_names)
        if list(data.class_names) != list(cam.class_names):
            raise ValueError(
                f"{path}: its classes {data.class_names} are not the model's "
                f"{list(cam.class_names)}"
            )
        train_idx, val_idx = stratified_split(data.labels, val_fraction, seed)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError(f"{path}: too few images to split ({len(data)})")
        pick = np.sort(rng.choice(train_idx, size=min(images, len(train_idx)), replace=False))
        chosen = CalibrationData(
            calibration=data.images[pick],
            evaluation=data.images[val_idx],
            labels=data.labels[val_idx],
            info=_labelled_info(source, len(pick), len(val_idx), (val_fraction, seed)),
            skipped=data.skipped,
        )
        if cache is not None:
            _write_cache(cache, chosen)
        return chosen
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder of images, nor an .npz data set")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    decoded = []
    skipped: list[tuple[str, str]] = []
    for done, file in enumerate(files, 1):
        if progress is not None:
            progress(done, len(files))
        try:
            decoded.append(resize_to(load_image(file, channels=spec.channels), *size))
        except ImageError as exc:
            skipped.append((str(file), exc.reason))
    if not decoded:
        raise ValueError(f"{path}: no readable images")
    stack = np.stack(decoded)
    order = rng.permutation(len(stack))
    calib, rest = order[:images], order[images:]
    held_out = len(rest) > 0
    return CalibrationData(
        calibration=stack[np.sort(calib)],
        evaluation=stack[np.sort(rest if held_out else calib)],
        labels=None,
        info={
            "source": str(source),
            "images": len(calib),
            "taken_from": f"a seeded shuffle ({seed}) of an unlabelled folder",
            "compared_on": (
                f"the other {len(rest)} images" if held_out else "the calibration images"
            ),
        },
        skipped=skipped,
    )


def _labelled_info(
    source: str | os.PathLike[str], picked: int, compared: int, split: tuple[float, int]
) -> dict[str, Any]:
    return {
        "source": str(source),
        "images": picked,
        "taken_from": f"training side of stratified_split(labels, {split[0]}, {split[1]})",
        "compared_on": f"validation side ({compared} images)",
    }


def _cache_file(
    cache_dir: Path | None, path: Path, size: tuple[int, int], channels: int, settings: tuple
) -> Path | None:
    """The cache of a labelled folder's chosen images (None without a cache or for an
    .npz), keyed by the folder's file list, the size and the choice's settings."""
    if cache_dir is None or not path.is_dir():
        return None
    from scenecam_edge.dataset import list_folder

    _, items = list_folder(path)
    listing = [(str(p), y) for p, y in items]
    key = hashlib.sha256(
        repr((str(path.resolve()), size, channels, settings, listing)).encode()
    ).hexdigest()[:16]
    return cache_dir / f"{path.name}-calibration-{size[0]}x{size[1]}x{channels}-{key}.npz"


def _write_cache(cache: Path, data: CalibrationData) -> None:
    """The chosen images only, written atomically (a temporary file renamed)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.partial.npz")
    try:
        np.savez(
            tmp,
            calibration=data.calibration,
            evaluation=data.evaluation,
            labels=data.labels if data.labels is not None else np.zeros(0, np.int64),
            skipped=np.array(data.skipped, dtype=str).reshape(-1, 2),
        )
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    data.cache, data.cache_written = cache, True


def _read_cache(
    cache: Path, source: str | os.PathLike[str], split: tuple[float, int]
) -> CalibrationData:
    with np.load(cache, allow_pickle=False) as npz:
        calibration, evaluation = npz["calibration"], npz["evaluation"]
        labels, skipped = npz["labels"], [(str(p), str(r)) for p, r in npz["skipped"]]
    log.info("read %d calibration images from the cache %s", len(calibration), cache)
    return CalibrationData(
        calibration=calibration,
        evaluation=evaluation,
        labels=labels,
        info=_labelled_info(source, len(calibration), len(evaluation), split),
        skipped=skipped,
        cache=cache,
    )
