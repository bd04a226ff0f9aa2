"""A ``--source`` argument, classified once and opened: a camera, a network stream or a
video file, as a :class:`~.sources.FrameSource`."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import cv2

from ..errors import SourceError
from ..names import too_long
from .sources import (
    STREAM_TIMEOUT,
    Capture,
    FileSource,
    FrameSource,
    LiveSource,
    Reconnect,
    opened,
)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CREDENTIALS = re.compile(r"(://[^/@:]*:)[^/@]*@")

SourceKind = Literal["camera", "file", "stream"]


@dataclass(frozen=True)
class SourceSpec:
    """A ``--source`` argument, classified once: a camera (an index such as ``0``, or a
    ``/dev/video*`` device), a network stream (``rtsp://``, ``http://``, any ``scheme://``
    except ``file://``) or a video file."""

    text: str
    kind: SourceKind
    location: int | str  # what cv2.VideoCapture opens

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def name(self) -> str:
        """The source as logs and errors show it: a stream's password is masked."""
        return _CREDENTIALS.sub(r"\1***@", self.text) if self.kind == "stream" else self.text


def parse_source(text: str) -> SourceSpec:
    stripped = text.strip()
    if stripped.isdigit():
        return SourceSpec(text, "camera", int(stripped))
    if stripped.startswith("/dev/video"):
        return SourceSpec(text, "camera", stripped)
    if stripped.lower().startswith("file://"):
        return SourceSpec(text, "file", stripped[len("file://") :])
    if _URL.match(stripped):
        return SourceSpec(text, "stream", stripped)
    return SourceSpec(text, "file", text)


def open_capture(spec: SourceSpec, timeout: float = STREAM_TIMEOUT) -> Capture:
    """``cv2.VideoCapture`` for a source; streams get open and read timeouts of ``timeout``
    seconds, cameras a one-frame driver buffer (so the driver does not queue stale frames)."""
    if spec.kind == "stream":
        ms = max(1, round(timeout * 1000))
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(str(spec.location), cv2.CAP_FFMPEG, params)
    capture = cv2.VideoCapture(spec.location)
    if spec.kind == "camera":
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return capture


def open_source(
    source: str,
    *,
    reconnect: Reconnect | None = None,
    timeout: float = STREAM_TIMEOUT,
    opener: Callable[[SourceSpec], Capture] | None = None,
) -> FrameSource:
    """Open ``--source``: a :class:`FileSource` for a video file, a :class:`LiveSource` for a
    camera or stream. Network streams wait at most ``timeout`` seconds to open and for each
    frame, and reconnect with ``reconnect`` (default :class:`Reconnect()`). ``opener``
    replaces ``cv2.VideoCapture`` (for a camera index in tests: there is no camera).
    Raises :class:`SourceError` naming the source and the reason."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, not {timeout}")
    spec = parse_source(source)
    name = spec.name
    if spec.kind == "file":
        problem = _file_problem(Path(str(spec.location)))
        if problem is not None:
            raise SourceError(name, problem)
    open_ = opener or partial(open_capture, timeout=timeout)
    started = time.monotonic()
    capture = opened(lambda: open_(spec))
    if capture is None:
        waited = time.monotonic() - started
        reasons = {
            "file": "cannot be opened as a video (unknown format or codec)",
            "camera": f"cannot open camera {spec.location}",
            "stream": (
                f"no answer within {timeout:g} s (the server accepted but sent nothing)"
                if waited >= 0.9 * timeout
                else "cannot open the stream (unreachable, refused or not a video stream)"
            ),
        }
        raise SourceError(name, reasons[spec.kind])
    if spec.kind == "file":
        return FileSource(name, capture)
    reopen = (lambda: open_(spec)) if spec.kind == "stream" else None
    return LiveSource(
        name, capture, reopen=reopen, policy=reconnect or Reconnect(), timeout=timeout
    )


def _file_problem(path: Path) -> str | None:
    if (reason := too_long(path)) is not None:
        return reason
    if not path.exists():
        return "broken symbolic link" if path.is_symlink() else "no such file"
    if path.is_dir():
        return "is a directory, not a video"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None
