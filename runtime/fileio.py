"""Atomic writes: a temporary file in the same folder, then a rename. Readers never see a
half-written file, and an interrupted write leaves the previous version (or nothing)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def temporary_beside(path: str | os.PathLike[str]) -> Path:
    """An empty temporary file in ``path``'s folder, with the same suffix (writers such as
    OpenCV's VideoWriter pick the format from it) and the usual permissions. The caller
    fills it, then ``os.replace``-s it over ``path`` or unlinks it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


@contextmanager
def folder_replaced_on_success(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder beside ``path``, with the usual permissions (mkdtemp makes 0700),
    to fill inside the ``with`` block. If the block ends without an error, the folder
    replaces ``path`` (a folder already there is removed) in one rename; otherwise it is
    removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(0o777 & ~_umask())
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def write_png_atomic(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an RGB (or single-channel) uint8 picture as PNG."""
    picture = rgb[:, :, 0] if rgb.ndim == 3 and rgb.shape[2] == 1 else rgb
    encoded = io.BytesIO()
    # Level 1, as OpenCV's encoder used before: the fastest zlib level; files ~10% larger.
    Image.fromarray(np.ascontiguousarray(picture)).save(encoded, "PNG", compress_level=1)
    return write_bytes_atomic(path, encoded.getvalue())
