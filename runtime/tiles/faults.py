"""What can stop a scene's outputs midway, and how a job answers it.

- **Signals.** :func:`interruptible` makes SIGTERM and SIGHUP stop a job as Ctrl-C does (an
  :class:`~scenecam_edge.batch.Interrupted` that unwinds it: temporary files removed, exit
  128 + the signal, as ``batch`` does). :func:`deferred_signals` holds them back while a
  scene's finished files are renamed into place and its summary written, so a signal (a
  second Ctrl-C) never leaves a class map under its final name without its summary.
- **Failed writes.** GDAL reports a full disk as "Write failed" (``RasterioIOError``, no
  errno) and libtiff prints its own ``_tiffWriteProc: No space left on device.`` lines on
  stderr from C, past every handler. :func:`writing` turns GDAL's failures into an
  ``OSError`` naming the output, with the file system's errno when it can be told;
  :func:`libtiff_lines_hidden` keeps libtiff's lines off stderr (as hints for that errno).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

from ..batch import Interrupted, heeded
from ..fileio import STORAGE_ERRNOS

#: The signals a job stops at (then exits 128 + the signal: 130, 143, 129).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Handler = Callable[[int, FrameType | None], Any] | int | None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _restorable(handler: Handler) -> Any:
    """A handler ``signal.signal`` accepts (None: one set outside Python, the default)."""
    return signal.SIG_DFL if handler is None else handler


@contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs (main thread only), SIGINT, SIGTERM and SIGHUP (those the process
    does not ignore) raise
    :class:`Interrupted` (``.signum``): the job unwinds as it does for Ctrl-C. Only the
    first does: later ones (a second Ctrl-C) are ignored while it unwinds and after, when
    the caller exits (the handlers that were there come back only when the block ends
    without a signal)."""
    global _FIRED
    if not _main_thread():
        yield
        return
    fired: list[int] = []
    _FIRED = fired
    caught = heeded(SIGNALS)  # one the process ignores stays ignored (nohup: SIGHUP)

    def handler(signum: int, frame: FrameType | None) -> None:
        if not fired:
            fired.append(signum)
            # ignored by the system, not by a Python handler: the interpreter puts its own
            # handlers back to the default while it exits, when a second signal would kill
            # the process (exit -2 instead of 130)
            for other in caught:
                signal.signal(other, signal.SIG_IGN)
            raise Interrupted(signum)

    def unraisable(info: Any) -> None:
        # raised inside a callback from C (rasterio's GDAL logging) it is dropped there:
        # no traceback; check_interrupted raises it again at the next row
        if not isinstance(info.exc_value, Interrupted):
            hook(info)

    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    previous = {s: signal.signal(s, handler) for s in caught}
    try:
        yield
    except BaseException:
        raise  # the handlers stay: later signals are ignored while the caller exits
    else:
        for signum, old in previous.items():
            signal.signal(signum, _restorable(old))
    finally:
        sys.unraisablehook = hook
        _FIRED = None


def check_interrupted() -> None:
    """Raise :class:`Interrupted` again when a signal arrived inside :func:`interruptible`
    but its exception was dropped (raised inside a callback from C): call between rows."""
    if _FIRED:
        raise Interrupted(_FIRED[0])


_FIRED: list[int] | None = None


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while the block runs (main thread only); one
    that arrived meanwhile is raised again right after, to the handler that was there."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = {s: signal.signal(s, hold) for s in heeded(SIGNALS)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, _restorable(old))
        if pending:
            signal.raise_signal(pending[0])


# -- failed writes ----------------------------------------------------------------------------


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """Any failure to write ``target`` (GDAL's included) as one ``OSError`` naming it: the
    file system's errno where there is one, else the one :func:`storage_errno` tells."""
    from rasterio._err import CPLE_BaseError

    try:
        yield
    except OSError as exc:
        if exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from None
        raise _gdal_error(exc, target) from None
    except CPLE_BaseError as exc:
        raise _gdal_error(exc, target) from None


def _gdal_error(exc: BaseException, target: Path) -> OSError:
    code = storage_errno(target.parent)
    if code is not None:
        return OSError(code, os.strerror(code), str(target))
    text = str(exc).strip()
    return OSError(errno.EIO, text.splitlines()[0] if text else type(exc).__name__, str(target))


def storage_errno(folder: Path) -> int | None:
    """Why writing in ``folder`` just failed, when the system can tell: what libtiff printed
    (seen by :func:`libtiff_lines_hidden`), else a read-only or full file system."""
    if _FILTER is not None:
        for message in _FILTER.hints():
            for code in STORAGE_ERRNOS:
                if os.strerror(code) in message:
                    return code
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if stats.f_bavail * stats.f_frsize < 1 << 20:  # less than 1 MiB left: full
        return errno.ENOSPC
    return None


#: A line libtiff prints from C (its default handler): ``_tiffWriteProc: <strerror>.``
_LIBTIFF_LINE = re.compile(rb"_tiff\w+Proc: (.*)\.\n")
_FILTER: _StderrFilter | None = None


class _StderrFilter:
    """File descriptor 2 through a pipe: libtiff's own lines are kept (the last few) and
    not shown; everything else goes on to the real stderr unchanged and in order."""

    def __init__(self) -> None:
        self._saved = os.dup(2)
        read, write = os.pipe()
        self._read = read
        self._lines: deque[str] = deque(maxlen=16)
        self._marks: dict[bytes, threading.Event] = {}
        sys.stderr.flush()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, name="scenecam-stderr", daemon=True)
        self._thread.start()

    def hints(self) -> list[str]:
        """libtiff's lines so far (everything written to fd 2 before the call is read)."""
        mark = f"\0scenecam-mark-{threading.get_ident()}\n".encode()
        seen = self._marks[mark] = threading.Event()
        try:
            os.write(2, mark)
            seen.wait(timeout=2.0)
        except OSError:
            pass
        finally:
            self._marks.pop(mark, None)
        return list(self._lines)

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # the pipe's last writer closes: the pump reads to its end
        self._thread.join(timeout=5.0)
        os.close(self._saved)
        os.close(self._read)

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read, 65536)
            except OSError:
                chunk = b""
            pending += chunk
            *lines, pending = pending.split(b"\n")
            shown = []
            for line in (text + b"\n" for text in lines):
                if (event := self._marks.get(line)) is not None:
                    event.set()
                elif (match := _LIBTIFF_LINE.fullmatch(line)) is not None:
                    self._lines.append(match.group(1).decode("utf-8", "replace"))
                else:
                    shown.append(line)
            if pending and not (b"_tiff".startswith(pending[:5]) or pending.startswith(b"\0")):
                shown.append(pending)  # a progress bar's line in the making: show it now
                pending = b""
            if not chunk:
                shown.append(pending)
            _write_all(self._saved, b"".join(shown))
            if not chunk:
                return


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass


@contextmanager
def libtiff_lines_hidden() -> Iterator[None]:
    """Keep the lines libtiff prints itself off stderr while the block runs (the command
    says what failed in one line of its own); everything else is shown as it comes."""
    global _FILTER
    if _FILTER is not None:
        yield
        return
    try:
        # signals wait: fd 2 is never left on a pipe nobody reads; no stderr (closed): no filter
        with deferred_signals(), suppress(OSError):
            _FILTER = _StderrFilter()
        yield
    finally:
        active, _FILTER = _FILTER, None
        if active is not None:
            with deferred_signals():
                active.close()
