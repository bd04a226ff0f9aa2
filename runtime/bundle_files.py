"""A bundle's files, opened as untrusted: never through a link that leaves the folder, only
regular files, and within a size limit checked before anything is read. Knows nothing of the
manifest (:mod:`scenecam_edge.bundle` does)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import BundleError


def open_bundle_file(bundle_dir: Path, fname: str, max_bytes: int) -> io.FileIO:
    """Open ``bundle_dir/fname`` for reading, refusing a link that leads out of the folder,
    anything but a regular file (a FIFO would block) and files over ``max_bytes``."""
    root = os.path.realpath(bundle_dir)
    path = os.path.join(bundle_dir, fname)
    real = os.path.realpath(path)
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        raise BundleError(bundle_dir, f"{fname} is a link that leads outside the bundle folder")
    if not os.path.lexists(path):
        raise BundleError(bundle_dir, f"{fname} is missing")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleError(bundle_dir, f"{fname} cannot be opened ({exc.strerror})") from None
    fh = io.FileIO(fd, "rb")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        fh.close()
        raise BundleError(bundle_dir, f"{fname} is not a regular file")
    if info.st_size > max_bytes:
        fh.close()
        raise BundleError(
            bundle_dir, f"{fname} is {info.st_size} bytes, over the limit of {max_bytes}"
        )
    return fh


def read_bundle_file(bundle_dir: Path, fname: str, max_bytes: int) -> bytes:
    """The bytes of a bundle file, opened as :func:`open_bundle_file` does."""
    with open_bundle_file(bundle_dir, fname, max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BundleError(bundle_dir, f"{fname} grew over the limit of {max_bytes} bytes")
    return data


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file (the manifest's checksums)."""
    with path.open("rb") as fh:
        return sha256_of(fh)


def sha256_of(fh: BinaryIO | io.FileIO) -> str:
    """The sha256 hex digest of what is left to read in an open file."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()
