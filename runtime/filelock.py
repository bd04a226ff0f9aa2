"""One writer per output: an exclusive ``flock`` on a lock file beside it, holding the pid.

The lock goes with the process (a killed writer leaves no stale lock, only a file the next
one takes over). The lock file is removed on the way out; a process that opened it just
before then notices the removal after locking and starts over on the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import SceneCamError
from .fileio import refuse_symlink


class ResultsBusy(SceneCamError):
    """Another process is writing this output."""


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, subject: Path) -> Iterator[None]:
    """Hold the lock for the block; :class:`ResultsBusy` naming ``subject`` and the holder's
    pid when another process holds it."""
    refuse_symlink(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(lock_path, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ResultsBusy(
                subject,
                f"is being written by another batch run (pid {holder}, lock {lock_path.name}); "
                "wait for it to finish or choose another --out",
            ) from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed it as we opened it: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)
