"""The loop: frames from a source, through the model, to an annotated picture that goes to a
window, the outputs and any listener (the live view).

Library code: it logs and returns a :class:`CameraSummary`; the ``camera`` command prints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO

import cv2
import numpy as np

from ..bands import check_count, is_raster_model
from ..cam import METHODS
from ..fileio import write_bytes_atomic
from ..model import SceneCam
from ..options import ExplainOptions
from ..results import Classification
from .display import KEY_ESC, KEY_HEATMAP, KEY_METHOD, KEY_QUIT, KEY_SNAPSHOT, Annotator, Display
from .outputs import OutputError, Outputs, video_fourcc
from .sources import POLL, Frame, FrameSource

log = logging.getLogger("scenecam_edge.camera")

#: How long a note ("saved ...", "method: ...") stays on the picture (seconds).
_NOTE_SECONDS = 2.0

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
    as fast as the model goes. ``explain``: how maps are made, one
    :class:`~scenecam_edge.options.ExplainOptions` as :meth:`SceneCam.explain_options` gives
    it (None: the model's defaults); checked against the model when the loop starts.
    """

    explain: ExplainOptions | None = None
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
    arrived: float  # time.monotonic() when the frame was read from the source
    image: np.ndarray = field(repr=False, compare=False)
    # the class the map shows and its target space (None while the heatmap is off)
    target: str | None = None
    target_space: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: frame numbers, timestamp, label, confidence, probabilities and how
        the heatmap was made (``target``, the class it shows, ``target_space`` and ``method``,
        as classify's records have them; null while the heatmap is off)."""
        return {
            "frame": self.number,
            "source_frame": self.source_index,
            "time": round(self.time, 4),
            "label": self.result.label,
            "index": self.result.index,
            "confidence": round(self.result.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in self.result.probabilities.items()},
            "heatmap": self.heatmap,
            "target": self.target,
            "target_space": self.target_space,
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

    The outputs are created before the first frame and renamed into place when the loop ends,
    whichever way it ends. Raises ValueError for bad settings and :class:`OutputError` when
    an output cannot be created or written: the loop stops at once, the video's temporary
    file is removed and the JSON lines so far are kept as ``NAME.partial`` (see
    :mod:`.outputs`). Load ``scenecam`` with ``spin=False`` so onnxruntime does not
    busy-wait between frames.
    """
    return CameraLoop(
        scenecam, source, settings or CameraSettings(), display=display, on_frame=on_frame
    ).run(stop or threading.Event())


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
        channels = scenecam.manifest.input.channels
        if is_raster_model(channels, scenecam.band_stretch):
            check_count(source.name, 3, channels)  # frames are colour: three bands
        self.scenecam = scenecam
        self.source = source
        self.settings = settings
        self.display = display
        self.on_frame = on_frame
        given = settings.explain or scenecam.explain_options()
        self.options = scenecam.explain_options(
            given.target,
            given.method,
            given.target_space,
            given.alpha,
            given.max_channels,
            given.layer,
        )
        self.heatmap_on = settings.heatmap
        self.snapshots: list[Path] = []
        self.heatmaps = 0
        self.frames = 0  # processed and written
        self._since = settings.every  # frames since the last fresh map; >= every: make one
        self._shown: tuple[str | None, str | None] = (None, None)  # the last map's target
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
        try:
            outputs = Outputs(settings.out, settings.out_fps or source.fps or 30.0, settings.jsonl)
        except OutputError:
            if self.display is not None:
                self.display.close()
            raise
        start = time.perf_counter()
        try:
            ended = self._loop(stop, outputs, start)
        except OutputError as exc:
            raise outputs.fail(exc, self.frames) from None
        except BaseException:  # a second Ctrl-C, a bug: the outputs still end complete
            try:
                outputs.finish()
            except OutputError as exc:
                log.error("%s", outputs.fail(exc, self.frames))
            raise
        finally:
            seconds = time.perf_counter() - start
            if self.display is not None:
                self.display.close()
        try:
            out = outputs.finish()
        except OutputError as exc:
            raise outputs.fail(exc, self.frames) from None
        log.info("%s: %d frames in %.2f s (%s)", source.name, self.frames, seconds, ended)
        return CameraSummary(
            source=source.name,
            frames=self.frames,
            heatmaps=self.heatmaps,
            dropped=source.dropped,
            reconnects=source.reconnects,
            seconds=seconds,
            ended=ended,
            error=source.error if ended == "error" else None,
            out=out,
            snapshots=tuple(self.snapshots),
        )

    def _loop(self, stop: threading.Event, outputs: Outputs, start: float) -> Ending:
        settings, source = self.settings, self.source
        # With a window, a live source is read with a timeout so that keys still work while
        # no frame comes (a slow camera, a stream reconnecting).
        timeout = POLL if self.display is not None else None
        pace = settings.realtime and not source.live
        first: float | None = None  # the first frame's timestamp, for pacing
        while True:
            if stop.is_set():
                return "stopped"
            if settings.max_frames is not None and self.frames >= settings.max_frames:
                return "max-frames"
            frame = source.read(stop, timeout)
            if frame is None:
                if stop.is_set():
                    return "stopped"
                if not source.finished:  # no new frame yet
                    if self.display is not None and self.handle_key(self.display.poll()):
                        return "quit"
                    continue
                return "error" if source.error else "end"
            if pace:
                first = frame.time if first is None else first
                stop.wait(start + frame.time - first - time.perf_counter())
            report = self.process(frame, self.frames)
            outputs.write(report.image, report.to_dict())
            self.frames += 1
            if self.on_frame is not None:
                self.on_frame(report)
            if self.display is not None and self.handle_key(
                self.display.show(report.image), report
            ):
                return "quit"

    def process(self, frame: Frame, number: int) -> FrameReport:
        """Classify one frame, blend a fresh or the last heatmap over it, annotate it."""
        bgr = frame.image
        if bgr.ndim == 2 or bgr.shape[2] == 1:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        self._rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=_fit(self._rgb, bgr.shape))
        # the stills' conversion: grey for a one-channel model, a model's band stretch
        pixels = self.scenecam.load_image(self._rgb)
        name = f"{self.source.name}#{frame.index}"
        every = self.settings.every
        status: HeatmapStatus = "off"
        image = bgr
        if self.heatmap_on and (
            self._since >= every or (every > 1 and self._colour.shape != bgr.shape)
        ):
            explained = self.scenecam.predict([pixels], [name], explain=self.options)[0]
            result: Classification = explained
            self._out = cv2.cvtColor(
                explained.overlay, cv2.COLOR_RGB2BGR, dst=_fit(self._out, bgr.shape)
            )
            if every > 1:  # keep the map in colour for the frames until the next one
                colour = explained.colours
                self._colour = cv2.cvtColor(
                    colour, cv2.COLOR_RGB2BGR, dst=_fit(self._colour, bgr.shape)
                )
            self._since = 1
            self.heatmaps += 1
            self._shown = (explained.target_label, explained.target_space)
            status, image = "computed", self._out
        else:
            result = self.scenecam.predict([pixels], [name])[0]
            if self.heatmap_on:  # the same blend as visual.overlay, in BGR
                alpha = self.options.alpha
                self._out = cv2.addWeighted(
                    self._colour, alpha, bgr, 1.0 - alpha, 0.0, dst=_fit(self._out, bgr.shape)
                )
                self._since += 1
                status, image = "reused", self._out
        self._tick()
        method = self.options.method if self.heatmap_on else None
        target, target_space = self._shown if status != "off" else (None, None)
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
            arrived=frame.arrived,
            image=image,
            target=target,
            target_space=target_space,
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
