"""Labelled image datasets for training and evaluation.

Two layouts: a class-per-folder tree (``<root>/<class>/*.jpg``; classes are the folder names,
sorted) and an ``.npz`` with arrays ``x`` (N, H, W[, C]) uint8 and ``y`` (N,) ints. Images go
through the runtime's own decode and resize, so training sees exactly what serving sees.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bands import Stretch
from .errors import ImageError
from .fileio import open_atomic
from .images import load_image, resize_to
from .sources import image_files

log = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    """Decoded images (N, H, W, C) uint8 with integer labels and where each came from."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    #: raster chips: the per-band stretch of their values to uint8 (manifest input.band_stretch)
    band_stretch: dict[str, list[float]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> LabelledImages:
        return LabelledImages(
            self.images[index],
            self.labels[index],
            self.class_names,
            [self.sources[i] for i in index],
        )

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.class_names)}


def class_folders(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{root}: no class folders found (expected <root>/<class>/*.jpg)")
    return names


def list_folder(
    root: Path, problems: list[tuple[str, str]] | None = None
) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (path, label) pairs of a class-per-folder tree, in a stable order;
    folders inside that cannot be read go into ``problems`` (see ``image_files``)."""
    names = class_folders(root)
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        items.extend((path, label) for path in image_files(root / name, problems))
    return names, items


def load_dataset(
    source: str | os.PathLike[str],
    size: tuple[int, int],
    channels: int = 3,
    cache_dir: Path | None = None,
    workers: int = 4,
    stretch: Stretch | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LabelledImages:
    """Load a folder tree or an ``.npz`` at ``size`` (height, width), decoding each image once.

    A folder is decoded in parallel and cached (keyed by its file list and the size) under
    ``cache_dir``; corrupt files are skipped and listed in ``.skipped``. ``stretch`` is a band
    model's ``band_stretch`` (:func:`scenecam_edge.images.load_image`). ``progress`` hears
    (images decoded, total) as a folder is decoded.
    """
    path = Path(source)
    if path.suffix == ".npz":
        return _load_npz(path, size, channels)
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder of class folders, nor an .npz file")
    unscanned: list[tuple[str, str]] = []
    names, items = list_folder(path, unscanned)
    if not items:
        raise ValueError(f"{path}: no images in the class folders")
    key = hashlib.sha256(
        repr(
            (str(path.resolve()), size, channels, stretch, [(str(p), y) for p, y in items])
        ).encode()
    ).hexdigest()[:16]
    cache = (
        cache_dir / f"{path.name}-{size[0]}x{size[1]}x{channels}-{key}.npz" if cache_dir else None
    )
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            log.info("loaded %d decoded images from cache %s", len(npz["labels"]), cache)
            return LabelledImages(
                npz["images"],
                npz["labels"],
                names,
                [str(s) for s in npz["sources"]],
                [(str(p), str(r)) for p, r in npz["skipped"]],
            )

    def decode(item: tuple[Path, int]) -> np.ndarray | str:
        try:
            return resize_to(load_image(item[0], channels=channels, stretch=stretch), *size)
        except ImageError as exc:
            return exc.reason

    images = np.empty((len(items), *size, channels), dtype=np.uint8)
    keep: list[int] = []
    skipped: list[tuple[str, str]] = list(unscanned)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, out in enumerate(pool.map(decode, items)):
            if progress is not None:
                progress(i + 1, len(items))
            if isinstance(out, str):
                skipped.append((str(items[i][0]), out))  # the caller reports them
            else:
                images[i] = out
                keep.append(i)
    data = LabelledImages(
        images[keep],
        np.array([items[i][1] for i in keep], dtype=np.int64),
        names,
        [str(items[i][0]) for i in keep],
        skipped,
    )
    if cache is not None:
        with open_atomic(cache) as fh:  # a temporary file, fsync-ed, then renamed
            np.savez(
                fh,
                images=data.images,
                labels=data.labels,
                sources=np.array(data.sources),
                skipped=np.array(skipped, dtype=str).reshape(-1, 2),
            )
    return data


#: Overrides where decoded data sets are cached (the test suite points it at a temporary one).
CACHE_ENV = "SCENECAM_CACHE"


def default_cache_dir() -> Path:
    """Where training, quantize's calibration and the benchmarks cache decoded data sets:
    ``$SCENECAM_CACHE`` when set, else ``$XDG_CACHE_HOME/scenecam-edge``, else
    ``~/.cache/scenecam-edge``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scenecam-edge"


def _load_npz(path: Path, size: tuple[int, int], channels: int) -> LabelledImages:
    with np.load(path, allow_pickle=False) as npz:
        if "x" not in npz.files or "y" not in npz.files:
            raise ValueError(f"{path}: an .npz dataset needs arrays 'x' and 'y'")
        x, y = npz["x"], npz["y"].astype(np.int64)
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(y):
        raise ValueError(f"{path}: 'x' must be uint8 (N, H, W[, C]) with one label per image")
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[3] != channels:
        x = np.stack([load_image(img, channels=channels) for img in x])
    if x.shape[1:3] != size:
        x = np.stack([resize_to(img, *size) for img in x])
    classes = np.unique(y)
    names = [str(c) for c in range(int(classes.max()) + 1)]
    return LabelledImages(x, y, names, [f"{path}[{i}]" for i in range(len(y))])


def align_classes(
    data: LabelledImages, model_classes: tuple[str, ...] | list[str]
) -> LabelledImages:
    """``data`` relabelled with the model's class indices, its class names the model's.

    A test set may hold only some of the model's classes, and its folders may be named in
    another case (``Sea/`` for ``sea``): each data class is matched to the model's class of
    the same name ignoring case. Raises ValueError naming every data class that matches none.
    """
    by_name = {name.casefold(): i for i, name in enumerate(model_classes)}
    unknown = [name for name in data.class_names if name.casefold() not in by_name]
    if unknown:
        raise ValueError(
            f"{', '.join(repr(n) for n in unknown)} match{'es' if len(unknown) == 1 else ''} "
            f"none of the model's classes ({', '.join(model_classes)})"
        )
    mapping = np.array([by_name[name.casefold()] for name in data.class_names], dtype=np.int64)
    return LabelledImages(
        data.images,
        mapping[data.labels] if len(data.labels) else data.labels,
        list(model_classes),
        data.sources,
        data.skipped,
    )


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: each class split in the same proportion, reproducibly."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_val = max(1, round(len(members) * val_fraction)) if len(members) > 1 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def label_conflicts(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the images that appear again, pixel for pixel, under another label.

    The scene data has five byte-identical pairs with conflicting labels (its README): one
    photo cannot be both "mountain" and "sea", and training on both copies teaches noise.
    Training drops these from its side of the split; the validation side is left alone so
    that figures stay comparable across runs.
    """
    owners: dict[bytes, set[int]] = {}
    keys = [hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest() for image in images]
    for key, label in zip(keys, labels, strict=True):
        owners.setdefault(key, set()).add(int(label))
    return np.flatnonzero([len(owners[key]) > 1 for key in keys])


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
