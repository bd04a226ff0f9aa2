"""Frame sources: a video file read in order, and a live source (camera or network stream)
read by a capture thread that keeps only the newest frame and reconnects a dropped stream.

How a ``--source`` argument becomes one of these is in :mod:`.capture`.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from ..closing import Closing
from ..errors import SourceError

log = logging.getLogger("scenecam_edge.camera")

#: How long a live source's reader waits before it checks the stop flag again (seconds).
POLL = 0.1
#: Network streams: how long OpenCV may wait to open a stream or for its next frame (s).
STREAM_TIMEOUT = 10.0


class Capture(Protocol):
    """What the sources use of ``cv2.VideoCapture``."""

    def isOpened(self) -> bool: ...
    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]: ...
    def get(self, propId: int) -> float: ...
    def release(self) -> None: ...


@dataclass(frozen=True)
class Reconnect:
    """How a dropped network stream is reopened: waits of ``first``, 2x, 4x, ... seconds,
    capped at ``cap``; at most ``attempts`` tries in a row without a frame (``None``: until
    the loop is stopped)."""

    attempts: int | None = 6
    first: float = 0.5
    cap: float = 8.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.first * 2.0**failures))


@dataclass(frozen=True)
class Frame:
    """One frame to process. ``image`` is BGR uint8 (H, W, 3) and belongs to the source again
    at the next ``read``. ``index`` is the frame's number in the source (for a live source, how
    many frames were captured before it, so drops show as gaps). ``time`` is in seconds: the
    frame's timestamp in a file, or since the live source was opened. ``arrived``: the
    ``time.monotonic()`` at which the frame was read from the capture."""

    image: np.ndarray
    index: int
    time: float
    arrived: float = 0.0


class FrameSource(Closing, ABC):
    """Frames one at a time; close it (or use ``with``) when done."""

    live: bool = False

    def __init__(self, name: str, fps: float | None) -> None:
        self.name = name
        self.fps = fps
        #: Why the source ended early (None: it ended normally or was stopped).
        self.error: str | None = None
        #: Live sources: frames captured but skipped because a newer one had arrived.
        self.dropped = 0
        #: Network streams: how many times the stream was reopened.
        self.reconnects = 0

    @abstractmethod
    def read(
        self, stop: threading.Event | None = None, timeout: float | None = None
    ) -> Frame | None:
        """The next frame to process, or None: at the end (``finished``; ``error`` says why
        when the source failed), once ``stop`` is set, or when a live source has no new frame
        within ``timeout`` seconds."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """No frame will come any more."""

    @abstractmethod
    def close(self) -> None: ...


class FileSource(FrameSource):
    """A video file read in order in the caller's thread: every frame, none dropped. One
    buffer is reused for every frame. The first frame is read when the source is opened, so
    a file OpenCV opens but cannot decode is refused up front. A file that ends before the
    frame count its container declares is damaged: ``error`` says how many frames were read
    of how many."""

    live = False

    def __init__(self, name: str, capture: Capture) -> None:
        super().__init__(name, capture_fps(capture))
        self._capture = capture
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        #: The frame count the container declares (None: it declares none).
        self.declared: int | None = int(count) if 0 < count < 2**31 else None
        self._buffer: np.ndarray | None = None
        self._next = 0
        self._done = False
        self._pending = self._grab()
        if self._pending is None:
            capture.release()
            raise SourceError(name, "no frame could be read (empty, truncated or unsupported)")

    def read(
        self, stop: threading.Event | None = None, timeout: float | None = None
    ) -> Frame | None:
        if stop is not None and stop.is_set():
            return None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        frame = self._grab()
        if frame is None and not self._done:
            self._done = True
            if self.declared is not None and self._next < self.declared:
                self.error = (
                    f"the video ended early: {self._next} of {self.declared} frames read "
                    "(the file is damaged or truncated)"
                )
        return frame

    @property
    def finished(self) -> bool:
        return self._done

    def close(self) -> None:
        self._capture.release()

    def _grab(self) -> Frame | None:
        ok, image = self._capture.read(self._buffer)
        if not ok or image is None:
            return None
        arrived = time.monotonic()
        self._buffer = image
        index, self._next = self._next, self._next + 1
        msec = self._capture.get(cv2.CAP_PROP_POS_MSEC)
        # The decoder's timestamp; a backend that gives none: the frame count and the rate.
        seconds = msec / 1000.0 if msec > 0 or index == 0 or not self.fps else index / self.fps
        return Frame(image, index, seconds, arrived)


class LiveSource(FrameSource):
    """A camera or stream read by a capture thread that keeps only the newest frame.

    Triple buffering: the thread reads into its own buffer and swaps it with the shared slot;
    ``read`` swaps the slot with the buffer it handed out last time. Nothing is copied, and
    the frame handed out is never written while the caller uses it. When ``reopen`` is given
    (network streams), a failed read closes the capture and reopens it with backoff.
    """

    live = True

    def __init__(
        self,
        name: str,
        capture: Capture,
        *,
        reopen: Callable[[], Capture] | None = None,
        policy: Reconnect | None = None,
        timeout: float = STREAM_TIMEOUT,
    ) -> None:
        super().__init__(name, capture_fps(capture))
        self._reopen = reopen
        self._policy = policy or Reconnect()
        self._timeout = timeout
        self._cond = threading.Condition()
        self._closing = threading.Event()
        # No buffer yet: OpenCV allocates the first frames (it refuses an empty array).
        self._back: np.ndarray | None = None  # the thread's
        self._slot: np.ndarray | None = None  # shared, under the lock
        self._front: np.ndarray | None = None  # the caller's
        self._slot_index = -1  # index of the frame in the slot
        self._slot_time = 0.0
        self._taken = -1  # index of the last frame handed out
        self._ended = False
        self.captured = 0
        self._t0 = time.monotonic()
        self._thread = threading.Thread(
            target=self._capture_loop, args=(capture,), name=f"capture {name}", daemon=True
        )
        self._thread.start()

    def read(
        self, stop: threading.Event | None = None, timeout: float | None = None
    ) -> Frame | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._slot_index <= self._taken:
                if self._ended or (stop is not None and stop.is_set()):
                    return None
                wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
                if wait <= 0:
                    return None
                self._cond.wait(wait)
            index, seconds = self._slot_index, self._slot_time
            self.dropped += index - self._taken - 1
            self._taken = index
            self._front, self._slot = self._slot, self._front
            assert self._front is not None  # a published frame is in the slot
            return Frame(self._front, index, seconds, self._t0 + seconds)

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._ended and self._slot_index <= self._taken

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=2 * POLL + self._timeout)
        if self._thread.is_alive():
            log.debug("%s: the capture thread is still blocked in a read; leaving it", self.name)

    def _capture_loop(self, capture: Capture) -> None:
        current: Capture | None = capture
        failures = 0  # reads or reopens in a row without a frame
        try:
            while current is not None and not self._closing.is_set():
                buffer = self._back
                ok, image = current.read(buffer)
                if ok and image is not None and image.size:
                    failures = 0
                    self._publish(image)
                    continue
                current.release()
                current = None
                if self._closing.is_set():
                    break
                if self._reopen is None:
                    self.error = "the source stopped delivering frames"
                    break
                current, failures = self._reconnect(self._reopen, failures)
        except Exception as exc:  # a capture backend raising: end the source, say why
            log.debug("%s: capture failed", self.name, exc_info=True)
            self.error = f"capture failed ({exc})"
        finally:
            if current is not None:
                current.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _publish(self, image: np.ndarray) -> None:
        now = time.monotonic() - self._t0
        with self._cond:
            self._back, self._slot = self._slot, image
            self._slot_index = self.captured
            self._slot_time = now
            self.captured += 1
            self._cond.notify_all()

    def _reconnect(
        self, reopen: Callable[[], Capture], failures: int
    ) -> tuple[Capture | None, int]:
        policy = self._policy
        while not self._closing.is_set():
            if policy.attempts is not None and failures >= policy.attempts:
                self.error = f"the stream dropped and {failures} reconnect attempts failed"
                return None, failures
            delay = policy.delay(failures)
            failures += 1
            of = "" if policy.attempts is None else f" of {policy.attempts}"
            log.warning(
                "%s: no frames; reconnecting in %.1f s (attempt %d%s)",
                self.name,
                delay,
                failures,
                of,
            )
            if self._closing.wait(delay):
                break
            capture = opened(reopen)
            if capture is not None:
                self.reconnects += 1
                log.warning("%s: reconnected", self.name)
                return capture, failures
        return None, failures


def opened(open_: Callable[[], Capture]) -> Capture | None:
    """The capture ``open_`` makes when it opened, else None (released)."""
    try:
        capture = open_()
    except cv2.error as exc:
        log.debug("opening failed: %s", exc)
        return None
    if capture.isOpened():
        return capture
    capture.release()
    return None


def capture_fps(capture: Capture) -> float | None:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if 0 < fps < 1000 else None
