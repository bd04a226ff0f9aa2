"""The camera loop: frames from OpenCV, through the model, to an annotated picture.

    source (file | camera | stream) --> SceneCam.predict --> overlay, label, fps --> window,
                                                                  video file, JSON lines

Two kinds of source. A video *file* is read in order in the caller's thread and every frame
is processed, so an annotated copy has exactly the input's frames. A *live* source (a camera
or a network stream) is read by a capture thread that keeps only the newest frame: when the
model is slower than the source, stale frames are dropped instead of piling up as lag. A
network stream that drops is reopened with capped exponential backoff.

Library code: it logs and returns a :class:`CameraSummary`; the ``camera`` command prints.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, Self, TextIO

import cv2
import numpy as np

from . import visual
from .cam import METHODS, TargetSpace
from .errors import SceneCamError, SourceError
from .fileio import temporary_beside, write_bytes_atomic
from .model import SceneCam
from .results import Classification

log = logging.getLogger(__name__)

#: Keys the window understands (``cv2.waitKey`` codes, low byte).
KEY_HEATMAP, KEY_METHOD, KEY_SNAPSHOT = ord("h"), ord("m"), ord("s")
KEY_QUIT, KEY_ESC = ord("q"), 27

#: Container suffix -> FourCC for the annotated video (codecs that OpenCV's own FFmpeg writes).
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}

#: How long a live source's reader waits before it checks the stop flag again (seconds).
_POLL = 0.1
#: Network streams: how long OpenCV may wait to open a stream or for its next frame (ms).
_STREAM_TIMEOUT_MS = 10_000
#: How long a note ("saved ...", "method: ...") stays on the picture (seconds).
_NOTE_SECONDS = 2.0

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CREDENTIALS = re.compile(r"(://[^/@:]*:)[^/@]*@")


# -- sources ---------------------------------------------------------------------------------


class Capture(Protocol):
    """What the loop uses of ``cv2.VideoCapture`` (tests pass fakes)."""

    def isOpened(self) -> bool: ...
    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]: ...
    def get(self, propId: int) -> float: ...
    def release(self) -> None: ...


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
    frame's timestamp in a file, or since the live source was opened."""

    image: np.ndarray
    index: int
    time: float


class FrameSource(ABC):
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileSource(FrameSource):
    """A video file read in order in the caller's thread: every frame, none dropped. One
    buffer is reused for every frame. The first frame is read when the source is opened, so
    a file OpenCV opens but cannot decode is refused up front."""

    live = False

    def __init__(self, name: str, capture: Capture) -> None:
        super().__init__(name, _fps(capture))
        self._capture = capture
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
        self._done = frame is None
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
        self._buffer = image
        index, self._next = self._next, self._next + 1
        msec = self._capture.get(cv2.CAP_PROP_POS_MSEC)
        # The decoder's timestamp; a backend that gives none: the frame count and the rate.
        seconds = msec / 1000.0 if msec > 0 or index == 0 or not self.fps else index / self.fps
        return Frame(image, index, seconds)


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
    ) -> None:
        super().__init__(name, _fps(capture))
        self._reopen = reopen
        self._policy = policy or Reconnect()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._back: np.ndarray = np.empty((0, 0, 3), np.uint8)  # the thread's
        self._slot: np.ndarray = np.empty((0, 0, 3), np.uint8)  # shared, under the lock
        self._front: np.ndarray = np.empty((0, 0, 3), np.uint8)  # the caller's
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
                wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
                if wait <= 0:
                    return None
                self._cond.wait(wait)
            index, seconds = self._slot_index, self._slot_time
            self.dropped += index - self._taken - 1
            self._taken = index
            self._front, self._slot = self._slot, self._front
            return Frame(self._front, index, seconds)

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._ended and self._slot_index <= self._taken

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=2 * _POLL + _STREAM_TIMEOUT_MS / 1000)
        if self._thread.is_alive():
            log.debug("%s: the capture thread is still blocked in a read; leaving it", self.name)

    def _capture_loop(self, capture: Capture) -> None:
        current: Capture | None = capture
        failures = 0  # reads or reopens in a row without a frame
        try:
            while current is not None and not self._closing.is_set():
                ok, image = current.read(self._back)
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
            capture = _opened(reopen)
            if capture is not None:
                self.reconnects += 1
                log.warning("%s: reconnected", self.name)
                return capture, failures
        return None, failures


def open_capture(spec: SourceSpec) -> Capture:
    """``cv2.VideoCapture`` for a source; streams get open and read timeouts, cameras a
    one-frame driver buffer (so the driver does not queue stale frames either)."""
    if spec.kind == "stream":
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            _STREAM_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            _STREAM_TIMEOUT_MS,
        ]
        return cv2.VideoCapture(str(spec.location), cv2.CAP_FFMPEG, params)
    capture = cv2.VideoCapture(spec.location)
    if spec.kind == "camera":
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return capture


def open_source(
    source: str,
    *,
    reconnect: Reconnect | None = None,
    opener: Callable[[SourceSpec], Capture] = open_capture,
) -> FrameSource:
    """Open ``--source``: a :class:`FileSource` for a video file, a :class:`LiveSource` for a
    camera or stream. Network streams reconnect with ``reconnect`` (default
    :class:`Reconnect()`). Raises :class:`SourceError` naming the source and the reason."""
    spec = parse_source(source)
    name = spec.name
    if spec.kind == "file":
        problem = _file_problem(Path(str(spec.location)))
        if problem is not None:
            raise SourceError(name, problem)
    capture = _opened(lambda: opener(spec))
    if capture is None:
        reasons = {
            "file": "cannot be opened as a video (unknown format or codec)",
            "camera": f"cannot open camera {spec.location}",
            "stream": "cannot open the stream (unreachable, refused or timed out)",
        }
        raise SourceError(name, reasons[spec.kind])
    if spec.kind == "file":
        return FileSource(name, capture)
    reopen = (lambda: opener(spec)) if spec.kind == "stream" else None
    return LiveSource(name, capture, reopen=reopen, policy=reconnect or Reconnect())


def _opened(open_: Callable[[], Capture]) -> Capture | None:
    try:
        capture = open_()
    except cv2.error as exc:
        log.debug("opening failed: %s", exc)
        return None
    if capture.isOpened():
        return capture
    capture.release()
    return None


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return "broken symbolic link" if path.is_symlink() else "no such file"
    if path.is_dir():
        return "is a directory, not a video"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def _fps(capture: Capture) -> float | None:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if 0 < fps < 1000 else None


# -- showing ----------------------------------------------------------------------------------


class Display(Protocol):
    """Where the annotated frames are shown. ``show`` and ``poll`` (called while no frame
    is due, so the window stays responsive) return the key pressed, -1 for none."""

    def show(self, image: np.ndarray) -> int: ...
    def poll(self) -> int: ...
    def close(self) -> None: ...


class Window:
    """An OpenCV window. Closing it with the mouse counts as ``q``."""

    def __init__(self, title: str = "scenecam-edge") -> None:
        self.title = title
        self._sized = False
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)

    def show(self, image: np.ndarray) -> int:
        if not self._sized:
            cv2.resizeWindow(self.title, image.shape[1], image.shape[0])
            self._sized = True
        cv2.imshow(self.title, image)
        return self.poll()

    def poll(self) -> int:
        key = cv2.waitKey(1)
        if key == -1:
            closed = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
            return KEY_QUIT if closed else -1
        return key & 0xFF

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)  # let the GUI thread process the close


def display_available() -> bool:
    """Whether a window can be opened (on Linux: an X11 or Wayland display is set)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class Annotator:
    """Draws on a BGR frame in place: a dark bar at the top with ``left`` (the label and
    confidence) and ``right`` (method and fps), and an optional note in a bar at the bottom.
    The layout is computed once per frame width."""

    FONT = cv2.FONT_HERSHEY_SIMPLEX

    def __init__(self) -> None:
        self._width = -1
        self._scale, self._thickness, self._pad, self._bar, self._baseline = 0.5, 1, 4, 20, 14

    def draw(self, image: np.ndarray, left: str, right: str, note: str = "") -> None:
        h, w = image.shape[:2]
        if w != self._width:
            self._layout(w)
        bar = min(self._bar, h)
        cv2.rectangle(image, (0, 0), (w - 1, bar - 1), (0, 0, 0), thickness=-1)
        self._text(image, left, self._pad, self._baseline)
        (rw, _), _ = cv2.getTextSize(right, self.FONT, self._scale, self._thickness)
        self._text(image, right, max(self._pad, w - self._pad - rw), self._baseline)
        if note:
            cv2.rectangle(image, (0, h - bar), (w - 1, h - 1), (0, 0, 0), thickness=-1)
            self._text(image, note, self._pad, h - bar + self._baseline)

    def _layout(self, width: int) -> None:
        self._width = width
        self._scale = min(1.2, max(0.4, width / 1100))
        self._thickness = 1 if self._scale < 0.9 else 2
        (_, th), base = cv2.getTextSize("Ag", self.FONT, self._scale, self._thickness)
        self._pad = max(4, th // 2)
        self._bar = th + base + 2 * self._pad
        self._baseline = self._pad + th

    def _text(self, image: np.ndarray, text: str, x: int, y: int) -> None:
        cv2.putText(
            image,
            text,
            (x, y),
            self.FONT,
            self._scale,
            (255, 255, 255),
            self._thickness,
            cv2.LINE_AA,
        )


# -- the loop ---------------------------------------------------------------------------------

HeatmapStatus = Literal["computed", "reused", "off"]
Ending = Literal["end", "max-frames", "quit", "stopped", "error"]


@dataclass(frozen=True)
class CameraSettings:
    """What the loop does.

    ``every``: a fresh heatmap every N frames, the last one blended over the frames between
    (classification still runs on every frame). ``out``: the annotated video (its suffix picks
    the codec, see :data:`VIDEO_CODECS`), written to a temporary file beside it and renamed
    when the loop ends; ``out_fps`` defaults to the source's rate, else 30. ``jsonl``: a path
    or an open text stream; one JSON object per processed frame, flushed line by line.
    ``snapshot_dir``: where the ``s`` key saves PNGs. ``realtime``: a video file is shown
    no faster than its own frame rate (for a window; live sources are never held back), else
    as fast as the model goes. ``method``, ``alpha``, ``target`` and
    ``target_space`` are as in :meth:`SceneCam.explain`.
    """

    method: str = "gradcam"
    alpha: float = visual.DEFAULT_ALPHA
    target: int | str | None = None
    target_space: TargetSpace = "logit"
    every: int = 1
    heatmap: bool = True
    max_frames: int | None = None
    realtime: bool = False
    out: Path | None = None
    out_fps: float | None = None
    jsonl: Path | TextIO | None = None
    snapshot_dir: Path = field(default_factory=Path)


@dataclass(frozen=True)
class FrameReport:
    """One processed frame. ``image`` is the annotated BGR picture, valid only during the
    ``on_frame`` call (copy it to keep it)."""

    number: int  # 0, 1, 2, ... over the processed frames
    source_index: int
    time: float
    result: Classification
    heatmap: HeatmapStatus
    method: str | None
    fps: float
    image: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: frame numbers, timestamp, label, confidence, probabilities and how
        the heatmap was made."""
        return {
            "frame": self.number,
            "source_frame": self.source_index,
            "time": round(self.time, 4),
            "label": self.result.label,
            "index": self.result.index,
            "confidence": round(self.result.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in self.result.probabilities.items()},
            "heatmap": self.heatmap,
            "method": self.method,
        }


@dataclass(frozen=True)
class CameraSummary:
    """How a run went. ``ended``: ``end`` of a file, ``max-frames``, ``quit`` (a key),
    ``stopped`` (the stop flag: Ctrl-C, SIGTERM) or ``error`` (``error`` says why)."""

    source: str
    frames: int
    heatmaps: int
    dropped: int
    reconnects: int
    seconds: float
    ended: Ending
    error: str | None
    out: Path | None
    snapshots: tuple[Path, ...]

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def run_camera(
    scenecam: SceneCam,
    source: FrameSource,
    settings: CameraSettings | None = None,
    *,
    display: Display | None = None,
    stop: threading.Event | None = None,
    on_frame: Callable[[FrameReport], None] | None = None,
) -> CameraSummary:
    """Run the loop until the source ends, ``max_frames``, a quit key, or ``stop`` is set.

    The video and the JSON lines are complete whichever way it ends: the writer is released
    and the file renamed into place in a ``finally``. Raises ValueError for bad settings and
    :class:`SceneCamError` when the output video cannot be written. Load ``scenecam`` with
    ``spin=False`` so onnxruntime does not busy-wait between frames.
    """
    return CameraLoop(
        scenecam, source, settings or CameraSettings(), display=display, on_frame=on_frame
    ).run(stop or threading.Event())


def video_fourcc(path: Path) -> str:
    """The codec for an output video, from its suffix; ValueError naming the ones known."""
    try:
        return VIDEO_CODECS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(VIDEO_CODECS)
        raise ValueError(f"{path}: unknown video suffix; use one of {known}") from None


class CameraLoop:
    """The per-frame work and the window's state (heatmap on/off, method, snapshots)."""

    def __init__(
        self,
        scenecam: SceneCam,
        source: FrameSource,
        settings: CameraSettings,
        *,
        display: Display | None = None,
        on_frame: Callable[[FrameReport], None] | None = None,
    ) -> None:
        if settings.every < 1:
            raise ValueError(f"every must be at least 1, not {settings.every}")
        if settings.max_frames is not None and settings.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, not {settings.max_frames}")
        if settings.out is not None:
            video_fourcc(settings.out)
        self.scenecam = scenecam
        self.source = source
        self.settings = settings
        self.display = display
        self.on_frame = on_frame
        self.options = scenecam.explain_options(
            settings.target, settings.method, settings.target_space, settings.alpha
        )
        self.heatmap_on = settings.heatmap
        self.snapshots: list[Path] = []
        self.heatmaps = 0
        self._since = settings.every  # frames since the last fresh map; >= every: make one
        # Buffers reused from frame to frame: RGB for the model, the annotated picture, and the
        # last heatmap in colour (BGR) when it is reused between frames.
        self._rgb: np.ndarray = np.empty((0, 0, 3), np.uint8)
        self._out: np.ndarray = np.empty((0, 0, 3), np.uint8)
        self._colour: np.ndarray = np.empty((0, 0, 3), np.uint8)
        self._fps = 0.0
        self._last: float | None = None
        self._note, self._note_until = "", 0.0
        self._annotator = Annotator()

    def run(self, stop: threading.Event) -> CameraSummary:
        settings, source = self.settings, self.source
        frames = 0
        ended: Ending = "end"
        video = (
            _VideoOut(settings.out, settings.out_fps or source.fps or 30.0)
            if settings.out is not None
            else None
        )
        jsonl, owned = _open_jsonl(settings.jsonl)
        # With a window, a live source is read with a timeout so that keys still work while
        # no frame comes (a slow camera, a stream reconnecting).
        timeout = _POLL if self.display is not None else None
        pace = settings.realtime and not source.live
        start = time.perf_counter()
        first: float | None = None  # the first frame's timestamp, for pacing
        try:
            while True:
                if stop.is_set():
                    ended = "stopped"
                    break
                if settings.max_frames is not None and frames >= settings.max_frames:
                    ended = "max-frames"
                    break
                frame = source.read(stop, timeout)
                if frame is None:
                    if stop.is_set():
                        ended = "stopped"
                        break
                    if not source.finished:  # no new frame yet
                        if self.display is not None and self.handle_key(self.display.poll()):
                            ended = "quit"
                            break
                        continue
                    ended = "error" if source.error else "end"
                    break
                if pace:
                    first = frame.time if first is None else first
                    stop.wait(start + frame.time - first - time.perf_counter())
                report = self.process(frame, frames)
                frames += 1
                if video is not None:
                    video.write(report.image)
                if jsonl is not None:
                    jsonl.write(json.dumps(report.to_dict()) + "\n")
                    jsonl.flush()
                if self.on_frame is not None:
                    self.on_frame(report)
                if self.display is not None and self.handle_key(
                    self.display.show(report.image), report
                ):
                    ended = "quit"
                    break
        finally:
            seconds = time.perf_counter() - start
            try:
                if video is not None:
                    video.close()
            finally:
                if jsonl is not None and owned:
                    jsonl.close()
                if self.display is not None:
                    self.display.close()
        log.info("%s: %d frames in %.2f s (%s)", source.name, frames, seconds, ended)
        return CameraSummary(
            source=source.name,
            frames=frames,
            heatmaps=self.heatmaps,
            dropped=source.dropped,
            reconnects=source.reconnects,
            seconds=seconds,
            ended=ended,
            error=source.error if ended == "error" else None,
            out=settings.out if video is not None and video.frames else None,
            snapshots=tuple(self.snapshots),
        )

    def process(self, frame: Frame, number: int) -> FrameReport:
        """Classify one frame, blend a fresh or the last heatmap over it, annotate it."""
        bgr = frame.image
        if bgr.ndim == 2 or bgr.shape[2] == 1:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        self._rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=_fit(self._rgb, bgr.shape))
        name = f"{self.source.name}#{frame.index}"
        every = self.settings.every
        status: HeatmapStatus = "off"
        image = bgr
        if self.heatmap_on and (
            self._since >= every or (every > 1 and self._colour.shape != bgr.shape)
        ):
            explained = self.scenecam.predict([self._rgb], [name], explain=self.options)[0]
            result: Classification = explained
            self._out = cv2.cvtColor(
                explained.overlay, cv2.COLOR_RGB2BGR, dst=_fit(self._out, bgr.shape)
            )
            if every > 1:  # keep the map in colour for the frames until the next one
                colour = visual.colorize(explained.heatmap)
                self._colour = cv2.cvtColor(
                    colour, cv2.COLOR_RGB2BGR, dst=_fit(self._colour, bgr.shape)
                )
            self._since = 1
            self.heatmaps += 1
            status, image = "computed", self._out
        else:
            result = self.scenecam.predict([self._rgb], [name])[0]
            if self.heatmap_on:  # the same blend as visual.overlay, in BGR
                alpha = self.options.alpha
                self._out = cv2.addWeighted(
                    self._colour, alpha, bgr, 1.0 - alpha, 0.0, dst=_fit(self._out, bgr.shape)
                )
                self._since += 1
                status, image = "reused", self._out
        self._tick()
        method = self.options.method if self.heatmap_on else None
        speed = f"{self._fps:.1f} fps" if self._fps > 0 else "-- fps"
        note = self._note if time.monotonic() < self._note_until else ""
        self._annotator.draw(
            image,
            f"{result.label} {result.confidence:.0%}",
            f"{method or 'heatmap off'} | {speed}",
            note,
        )
        return FrameReport(
            number=number,
            source_index=frame.index,
            time=frame.time,
            result=result,
            heatmap=status,
            method=method,
            fps=self._fps,
            image=image,
        )

    def handle_key(self, key: int, report: FrameReport | None = None) -> bool:
        """``h`` heatmap on/off, ``m`` next CAM method, ``s`` snapshot of the frame shown
        (``report``); True for ``q`` or Esc (quit)."""
        if key in (KEY_QUIT, KEY_ESC):
            return True
        if key == KEY_HEATMAP:
            self.heatmap_on = not self.heatmap_on
            self._since = self.settings.every
            self._say(f"heatmap {'on' if self.heatmap_on else 'off'}")
        elif key == KEY_METHOD:
            names = list(METHODS)  # registration order; a method registered later joins in
            method = names[(names.index(self.options.method) + 1) % len(names)]
            self.options = replace(self.options, method=method)
            self._since = self.settings.every
            self._say(f"method: {method}")
        elif key == KEY_SNAPSHOT and report is not None:
            self.snapshot(report)
        return False

    def snapshot(self, report: FrameReport) -> Path | None:
        """Save the annotated frame as a PNG in ``snapshot_dir`` (atomically, never over an
        existing file). A failed write is logged and shown; the loop goes on."""
        folder = self.settings.snapshot_dir
        stem = f"scenecam-{time.strftime('%Y%m%d-%H%M%S')}-{report.source_index:06d}"
        path, n = folder / f"{stem}.png", 2
        while path.exists():
            path, n = folder / f"{stem}-{n}.png", n + 1
        ok, encoded = cv2.imencode(".png", report.image)
        try:
            if not ok:
                raise OSError("PNG encoding failed")
            write_bytes_atomic(path, encoded.tobytes())
        except OSError as exc:
            log.error("%s: snapshot not saved (%s)", path, exc)
            self._say("snapshot failed")
            return None
        log.info("saved snapshot %s", path)
        self.snapshots.append(path)
        self._say(f"saved {path.name}")
        return path

    def _say(self, note: str) -> None:
        self._note, self._note_until = note, time.monotonic() + _NOTE_SECONDS

    def _tick(self) -> None:
        """The frame rate on screen: a moving average of the time between frames."""
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            rate = 1.0 / (now - self._last)
            self._fps = rate if self._fps == 0 else 0.9 * self._fps + 0.1 * rate
        self._last = now


def _fit(buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``buffer`` when it has ``shape``, else a new uint8 array of that shape (allocated once
    per change of frame size, not per frame)."""
    return buffer if buffer.shape == shape else np.empty(shape, np.uint8)


def _open_jsonl(target: Path | TextIO | None) -> tuple[TextIO | None, bool]:
    """The stream to write JSON lines to, and whether the loop opened (and closes) it."""
    if target is None:
        return None, False
    if isinstance(target, str | os.PathLike):
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", encoding="utf-8"), True
    return target, False


class _VideoOut:
    """The annotated video: opened at the first frame's size in a temporary file beside
    ``path``, released and renamed into place by ``close`` (kept only if it has frames)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
        self.fourcc = video_fourcc(path)
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._tmp: Path | None = None
        self._size = (0, 0)

    def write(self, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        writer = self._writer if self._writer is not None else self._open(size)
        if size != self._size:  # a live source changed resolution after a reconnect
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        writer.write(image)
        self.frames += 1

    def _open(self, size: tuple[int, int]) -> cv2.VideoWriter:
        self._tmp = temporary_beside(self.path)
        writer = cv2.VideoWriter(
            str(self._tmp), cv2.VideoWriter.fourcc(*self.fourcc), self.fps, size
        )
        if not writer.isOpened():
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
            raise SceneCamError(self.path, f"cannot write a {self.fourcc} video here")
        self._writer, self._size = writer, size
        return writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            if self.frames:
                os.replace(self._tmp, self.path)
            else:
                self._tmp.unlink(missing_ok=True)
            self._tmp = None
