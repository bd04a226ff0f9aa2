"""Calibration and comparison images for quantisation, decoded as training decodes them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.dataset import default_cache_dir
from scenecam_edge.errors import ImageError
from scenecam_edge.images import load_image, resize_to
from scenecam_edge.sources import IMAGE_SUFFIXES

from .quant_settings import DEFAULT_CALIBRATION_IMAGES, DEFAULT_SEED, DEFAULT_VAL_FRACTION

log = logging.getLogger(__name__)

#: Where training caches decoded data sets; reusing it saves decoding the folder again
#: ($SCENECAM_CACHE when set, as the process started).
DEFAULT_CACHE_DIR = default_cache_dir()


@dataclass
class CalibrationData:
    """Model-sized uint8 images: some to calibrate on, others to compare the models on."""

    calibration: np.ndarray
    evaluation: np.ndarray
    labels: np.ndarray | None  # of the evaluation images; None for an unlabelled folder
    info: dict[str, Any] = field(default_factory=dict)


def calibration_data(
    source: str | os.PathLike[str],
    cam: SceneCam,
    images: int = DEFAULT_CALIBRATION_IMAGES,
    *,
    val_fraction: float | None = None,
    seed: int | None = None,
    cache_dir: Path | None = None,
) -> CalibrationData:
    """Calibration and comparison images from ``source``, decoded as training decodes them.

    A labelled data set (class-per-folder with the model's classes, or an ``.npz``) is split as
    training splits it (``stratified_split(labels, val_fraction, seed)``; by default the split
    the model's manifest records, else 0.15 and 1337): ``images`` picked at random (seeded)
    from the training side calibrate, the validation side is compared on. Any other folder of
    images is unlabelled: the first ``images`` of a seeded shuffle calibrate and the rest (or,
    when none are left, the same ones) are compared on.
    """
    from scenecam_edge.dataset import (
        align_classes,
        class_folders,
        load_dataset,
        stratified_split,
    )

    if images < 1:
        raise ValueError(f"calibration images must be at least 1, not {images}")
    split = (cam.manifest.training or {}).get("split") or {}
    if val_fraction is None:
        val_fraction = float(split.get("val_fraction", DEFAULT_VAL_FRACTION))
    if seed is None:
        seed = int(split.get("seed", DEFAULT_SEED))
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
        data = load_dataset(path, size, spec.channels, cache_dir=cache_dir)
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
        return CalibrationData(
            calibration=data.images[pick],
            evaluation=data.images[val_idx],
            labels=data.labels[val_idx],
            info={
                "source": str(source),
                "images": len(pick),
                "taken_from": f"training side of stratified_split(labels, {val_fraction}, {seed})",
                "compared_on": f"validation side ({len(val_idx)} images)",
            },
        )
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder of images, nor an .npz data set")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    decoded = []
    for file in files:
        try:
            decoded.append(resize_to(load_image(file, channels=spec.channels), *size))
        except ImageError as exc:
            log.warning("skipped %s: %s", file, exc.reason)
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
    )
