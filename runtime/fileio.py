"""Files the runtime writes and files it opens, treated as untrusted.

Atomic writes: a temporary file in the same folder, then a rename. Readers never see a
half-written file, and an interrupted write leaves the previous version (or nothing). A write
never goes through a symbolic link at the output path (not even a dangling one), and a write
that fails (disk full, read-only, file size limit) raises an ``OSError`` that names the final
path, not the temporary one.

Reads: only regular files are opened as inputs; a FIFO would block forever and a device could
stream without end, so both are refused by type before anything opens them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .names import clean

#: errno values that mean "nothing more can be written here": a job stops at the first one.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM}
)

_FILE_TYPES = (
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def not_regular_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` must not be opened as an input file (a FIFO, a device, a socket), or None.

    Follows symbolic links (a link to a FIFO is a FIFO) and never opens the file. Missing
    files, folders and unreadable ones are left to the reader, which names them itself.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for check, reason in _FILE_TYPES:
        if check(mode):
            return reason
    return None


def refuse_symlink(path: str | os.PathLike[str]) -> None:
    """Raise ``OSError(ELOOP)`` naming ``path`` when it is a symbolic link (dangling or not):
    outputs are never written through one."""
    if os.path.islink(path):
        raise OSError(errno.ELOOP, "is a symbolic link; not writing through it", os.fspath(path))


def _named(exc: OSError, target: Path) -> OSError:
    """The same error, naming the final path (a temporary name means nothing to a user)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(target))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    with open_atomic(path) as fh:
        fh.write(data)
    return Path(path)


@contextmanager
def open_atomic(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to fill inside the ``with`` block (``np.savez`` into it, for one): a
    temporary file beside ``path`` with the usual permissions, flushed, fsync-ed and renamed
    over ``path`` when the block ends without an error, removed otherwise. Errors name
    ``path``; a symbolic link at ``path`` is refused, as :func:`write_bytes_atomic` does."""
    target = Path(path)
    refuse_symlink(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _named(exc, target) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        refuse_symlink(target)  # a link put there meanwhile is not replaced either
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _named(exc, target) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


_UMASK_LOCK = threading.Lock()
_umask_value: int | None = None


def _umask() -> int:
    """The process's umask, read once. Reading it means setting it (``os.umask``), and a
    thread creating a file between the two calls would get the temporary mask: so it is
    read from ``/proc/self/status`` where Linux offers it (nothing is set), else set and
    restored once, under a lock, and remembered."""
    global _umask_value
    with _UMASK_LOCK:
        if _umask_value is None:
            _umask_value = _read_umask()
        return _umask_value


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as indented JSON, valid UTF-8 (undecodable bytes in names as ``\\xNN``)."""
    return write_bytes_atomic(path, (json.dumps(clean(data), indent=2) + "\n").encode("utf-8"))


def write_png_atomic(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an RGB (or single-channel) uint8 picture as PNG."""
    return write_bytes_atomic(path, encode_png(rgb))


def encode_png(picture: np.ndarray) -> bytes:
    """A uint8 (H, W), (H, W, 1) or (H, W, 3) picture as PNG bytes, encoded for speed the way
    OpenCV's encoder does by default (the runtime used it before): every row with the "Sub"
    filter, zlib level 1 with the run-length strategy. Pillow's encoder tries five filters
    per row and measured several times slower."""
    arr = np.ascontiguousarray(picture.reshape(picture.shape[0], picture.shape[1], -1))
    height, width, channels = arr.shape
    if arr.dtype != np.uint8 or channels not in (1, 3):
        raise ValueError(f"PNG needs uint8 grey or RGB pixels, not {arr.dtype} {arr.shape}")
    rows = arr.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel to its left
    filtered[:, 1 : channels + 1] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, channels + 1 :])
    deflate = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
    data = deflate.compress(filtered.tobytes()) + deflate.flush()
    colour = 2 if channels == 3 else 0
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"".join(
        [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", data), _chunk(b"IEND", b"")]
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
