"""Heatmap files of a batch: one folder, safe distinct names, removed again if their record
could not be written (no heatmap without its record)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np

from .fileio import write_bytes_atomic, write_png_atomic
from .outputs import OutputNamer, is_inside
from .results import Explanation

#: Heatmap files: the overlay as PNG, the raw CAM as .npy, or both.
HeatmapFormat: TypeAlias = Literal["png", "npy", "both"]
HEATMAP_FORMATS: tuple[HeatmapFormat, ...] = ("png", "npy", "both")


class HeatmapSaver:
    """Saves each explanation's heatmap under one folder with safe, distinct names.

    ``png``: the overlay (heatmap in JET colours over the image) as ``<stem>.cam.png``;
    ``npy``: the raw CAM (float32, the features' resolution) as ``<stem>.cam.npy``; ``both``:
    the two, with the same stem. Names already used by ``taken`` (an earlier run's heatmaps)
    are never reused.
    """

    def __init__(self, directory: Path, fmt: HeatmapFormat, taken: Iterable[str] = ()) -> None:
        if fmt not in HEATMAP_FORMATS:
            raise ValueError(f"heatmap format must be one of {HEATMAP_FORMATS}, not {fmt!r}")
        self.directory = directory
        self.format = fmt
        reserved = [sib for p in taken for sib in (p, _sibling(p, ".png"), _sibling(p, ".npy"))]
        suffix = ".cam.npy" if fmt == "npy" else ".cam.png"
        self._namer = OutputNamer(directory, suffix, reserved)

    def contains(self, path: str) -> bool:
        """Whether ``path`` lies inside the heatmap folder (such inputs are not classified)."""
        return is_inside(path, self.directory)

    def save(self, result: Explanation) -> dict[str, str]:
        """Write the files; returns ``{"heatmap": path}`` (and ``"cam"`` for the .npy with
        ``both``) to add to the result's record. A failed write leaves none of them."""
        first = self._namer.path_for(result.source)
        written: dict[str, str] = {}
        try:
            if self.format in ("png", "both"):
                write_png_atomic(first, result.overlay)
                written["heatmap"] = str(first)
            if self.format in ("npy", "both"):
                target = first if self.format == "npy" else first.with_suffix(".npy")
                buffer = io.BytesIO()
                np.save(buffer, np.asarray(result.cam, dtype=np.float32), allow_pickle=False)
                write_bytes_atomic(target, buffer.getvalue())
                written["heatmap" if self.format == "npy" else "cam"] = str(target)
        except BaseException:
            remove(written.values())
            raise
        return written


def remove(paths: Iterable[str]) -> None:
    """Remove heatmap files whose record will not be written."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def _sibling(path: str, suffix: str) -> str:
    return str(Path(path).with_suffix(suffix))
