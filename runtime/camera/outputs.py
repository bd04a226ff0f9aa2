"""The loop's files: the annotated video and the JSON lines, written so that a final name only
ever holds a complete file.

Each output is written to a temporary file beside its final name, created when the loop
starts (so an unwritable place is refused before the first frame), and renamed into place
when the loop ends. Every write is checked; on a failure the loop stops with an
:class:`OutputError` naming the file and the reason. The video's temporary file is then
removed; the JSON lines written so far are kept as ``NAME.partial``. Nothing is ever written
through a symbolic link standing at an output path: it is refused up front.

OpenCV's ``VideoWriter.write`` reports nothing, so the video is checked around it: after every
frame, that the file system still has room and the file is under the process's file-size
limit (the two ways a write fails in practice), and at the end, that the finished file
opens and declares as many frames as were written (a file cut short by a failed write has
no index, or a shorter one).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from ..errors import SceneCamError
from ..fileio import temporary_beside
from ..names import clean

#: Container suffix -> FourCC for the annotated video (codecs that OpenCV's own FFmpeg writes).
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}

#: Below this much free space the video's next write cannot be trusted (bytes).
MIN_FREE = 256 * 1024


class OutputError(SceneCamError):
    """An output file could not be created or written."""


def video_fourcc(path: Path) -> str:
    """The codec for an output video, from its suffix; ValueError naming the ones known."""
    try:
        return VIDEO_CODECS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(VIDEO_CODECS)
        raise ValueError(f"{path}: unknown video suffix; use one of {known}") from None


def check_output(path: Path) -> None:
    """Refuse an output path before anything is written: a symbolic link, a folder, or a
    place under a regular file. Raises :class:`OutputError`."""
    if path.is_symlink():
        raise OutputError(path, "is a symbolic link; refusing to write through it")
    if path.is_dir():
        raise OutputError(path, "is a directory")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(path, f"{parent} is a file, not a folder")


def os_reason(exc: OSError) -> str:
    """A short reason for an OSError, without the path (the error line names the file)."""
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc)


def _temporary(path: Path) -> Path:
    check_output(path)
    try:
        return temporary_beside(path)
    except OSError as exc:
        raise OutputError(path, f"cannot be created ({os_reason(exc)})") from None


class VideoOut:
    """The annotated video. Its temporary file is created at once; the writer opens at the
    first frame's size (later frames of another size are resized to it)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
        self.fourcc = video_fourcc(path)
        self.frames = 0
        self._tmp: Path | None = _temporary(path)
        self._writer: cv2.VideoWriter | None = None
        self._size = (0, 0)
        self._limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)

    def write(self, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        writer = self._writer if self._writer is not None else self._open(size)
        if size != self._size:  # a live source changed resolution after a reconnect
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        writer.write(image)
        self.frames += 1
        self._check()

    def finish(self) -> Path | None:
        """Close the video and rename it into place; None when no frame was written (the
        temporary file is removed). Raises :class:`OutputError` when it is incomplete."""
        tmp, self._tmp = self._tmp, None
        if tmp is None:
            return None
        try:
            self._release()
            if not self.frames:
                return None
            readable = _declared_frames(tmp)
            if readable != self.frames:
                self._check()  # a full disk or the size limit, if that is why
                got = "cannot be read back" if readable is None else f"has {readable} frames"
                of = "" if readable is None else f" of {self.frames}"
                raise OutputError(self.path, f"the written video {got}{of} (write failed)")
            os.replace(tmp, self.path)
            tmp = None
            return self.path
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Stop writing and remove the temporary file."""
        self._release()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def _open(self, size: tuple[int, int]) -> cv2.VideoWriter:
        assert self._tmp is not None, "write after finish"
        writer = cv2.VideoWriter(
            str(self._tmp), cv2.VideoWriter.fourcc(*self.fourcc), self.fps, size
        )
        if not writer.isOpened():
            raise OutputError(self.path, f"cannot write a {self.fourcc} video here")
        self._writer, self._size = writer, size
        return writer

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _check(self) -> None:
        """Raise when the last write cannot have gone through: no room left on the file
        system, or the file at the process's size limit (RLIMIT_FSIZE)."""
        if self._tmp is None:
            return
        try:
            size = self._tmp.stat().st_size
            fs = os.statvfs(self._tmp.parent)
        except OSError as exc:
            raise OutputError(self.path, os_reason(exc)) from None
        if self._limit != resource.RLIM_INFINITY and size >= self._limit:
            raise OutputError(self.path, f"file size limit reached ({self._limit} bytes)")
        free = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize
        if free < MIN_FREE:
            reason = os.strerror(errno.ENOSPC).lower()
            raise OutputError(self.path, f"{reason} ({free // 1024} KiB free)")


def _declared_frames(path: Path) -> int | None:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return None
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        return int(count) if count >= 0 else None
    finally:
        capture.release()


class JsonlOut:
    """One JSON object per line, to a path (a temporary file renamed at the end) or to an
    open stream (standard output), flushed line by line."""

    def __init__(self, target: str | os.PathLike[str] | TextIO) -> None:
        self.path: Path | None = None
        self._tmp: Path | None = None
        if isinstance(target, str | os.PathLike):
            target = Path(target)
            self.path = target
            self._tmp = _temporary(target)
            try:
                self._stream: TextIO = self._tmp.open("w", encoding="utf-8")
            except OSError as exc:
                self._tmp.unlink(missing_ok=True)
                raise OutputError(target, f"cannot be created ({os_reason(exc)})") from None
        else:
            self._stream = target
        self.name = str(self.path) if self.path is not None else "standard output"

    @property
    def partial(self) -> Path | None:
        """Where the lines written so far are kept after a failure."""
        return None if self.path is None else self.path.with_name(self.path.name + ".partial")

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._stream.write(json.dumps(clean(record)) + "\n")
            self._stream.flush()
        except OSError as exc:
            raise OutputError(self.name, os_reason(exc)) from None

    def finish(self) -> Path | None:
        """Close and rename into place (a stream is flushed, not closed)."""
        if self._tmp is None:
            try:
                self._stream.flush()
            except OSError as exc:
                raise OutputError(self.name, os_reason(exc)) from None
            return None
        tmp, self._tmp = self._tmp, None
        try:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
            os.replace(tmp, self.path)  # type: ignore[arg-type]  # set with _tmp
        except OSError as exc:
            self._close_quietly()
            self._keep_partial(tmp)
            raise OutputError(self.name, os_reason(exc)) from None
        return self.path

    def abort(self) -> Path | None:
        """Stop; the lines written so far are kept as :attr:`partial` (returned)."""
        if self._tmp is None:
            return None
        tmp, self._tmp = self._tmp, None
        self._close_quietly()
        return self._keep_partial(tmp)

    def _close_quietly(self) -> None:
        with contextlib.suppress(OSError):  # the failure that brought us here was reported
            self._stream.close()

    def _keep_partial(self, tmp: Path) -> Path | None:
        partial = self.partial
        assert partial is not None
        try:
            if partial.is_symlink():
                partial.unlink()
            os.replace(tmp, partial)
            return partial
        except OSError:
            tmp.unlink(missing_ok=True)
            return None


class Outputs:
    """The loop's outputs together: created at once (an :class:`OutputError` before the first
    frame), written frame by frame, finished or failed as one."""

    def __init__(
        self, video: Path | None, fps: float, jsonl: str | os.PathLike[str] | TextIO | None
    ) -> None:
        self.video = VideoOut(video, fps) if video is not None else None
        try:
            self.jsonl = JsonlOut(jsonl) if jsonl is not None else None
        except OutputError:
            if self.video is not None:
                self.video.abort()
            raise

    def write(self, image: np.ndarray, record: dict[str, Any]) -> None:
        if self.video is not None:
            self.video.write(image)
        if self.jsonl is not None:
            self.jsonl.write(record)

    def finish(self) -> Path | None:
        """Rename every output into place; the video's final path (None: no video written).
        On a failure the rest is aborted and the :class:`OutputError` raised."""
        try:
            out = self.video.finish() if self.video is not None else None
            if self.jsonl is not None:
                self.jsonl.finish()
        except OutputError:
            self.abort()
            raise
        return out

    def abort(self) -> Path | None:
        """Stop everything; the video's temporary file is removed, the JSON lines are kept
        as ``NAME.partial`` (returned)."""
        if self.video is not None:
            self.video.abort()
        return self.jsonl.abort() if self.jsonl is not None else None

    def fail(self, error: OutputError, frames: int) -> OutputError:
        """Abort, and the error to raise: the reason, where the loop stopped, what was kept."""
        kept = self.abort()
        note = f"; the lines so far are in {kept}" if kept is not None else ""
        return OutputError(error.subject, f"{error.reason}; stopped after {frames} frames{note}")


def probe_output(path: Path) -> None:
    """Check before the run that ``path`` can be written: refused as :func:`check_output`
    does, or its folder cannot hold a new file. Raises :class:`OutputError`."""
    _temporary(path).unlink()
