"""``scenecam-edge camera``: classify and explain a camera, video file or stream live."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

import click
import cv2

from ..camera import (
    VIDEO_CODECS,
    CameraSettings,
    CameraSummary,
    Display,
    Window,
    display_available,
    open_source,
    parse_source,
    run_camera,
)
from ..errors import SceneCamError
from ..model import SceneCam
from .common import EXIT_FAILED_INPUTS, EXIT_USAGE, cam_options, error_line, fail, model_options

#: What ``signal.signal`` returns: a Python handler, SIG_DFL/SIG_IGN, or None (set from C).
_Handler = Callable[[int, FrameType | None], object] | int | None


@click.command()
@click.option(
    "--source",
    default="0",
    show_default=True,
    metavar="INDEX|FILE|URL",
    help="A camera index (0), a video file, or a stream URL (rtsp://, http://, ...).",
)
@model_options
@click.option("--headless", is_flag=True, help="No window: write --out and/or --jsonl only.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Write the annotated video here ({', '.join(VIDEO_CODECS)}).",
)
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Write one JSON object per processed frame here ('-': stdout).",
)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Compute the heatmap every N frames and reuse it between (labels: every frame).",
)
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@cam_options(alpha=True)
@click.option(
    "--snapshot-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where the s key saves PNG snapshots.",
)
def camera(
    source: str,
    model: str | None,
    threads: int | None,
    headless: bool,
    out: Path | None,
    jsonl: str | None,
    every: int,
    max_frames: int | None,
    target: str | None,
    target_space: str,
    method: str,
    alpha: float,
    snapshot_dir: Path,
) -> None:
    """Classify every frame of a camera, video file or stream and blend its heatmap over it.

    A window shows the overlay, the label, the confidence and the frame rate. Keys: h heatmap
    on/off, m next CAM method, s save a PNG snapshot, q or Esc quit. With --headless nothing
    is shown; --out writes the annotated video and --jsonl one line per frame.

    A video file is processed frame by frame, none skipped (in a window at its own frame
    rate, headless as fast as the model goes). A camera or stream is read by a capture
    thread that keeps only the newest frame, so a slow model never builds up lag; a stream
    that drops is reopened with backoff. Ctrl-C or SIGTERM ends the loop after the current
    frame, with the video and the JSON lines complete.

    Exit codes: 0 the loop ended (end of file, --max-frames, q, Ctrl-C, SIGTERM); 1 the
    source failed after it opened (a stream that could not be reconnected, a camera that
    stopped); 2 usage error; 3 the model or the source could not be opened.
    """
    if headless and out is None and jsonl is None:
        _usage("--headless needs --out or --jsonl: nothing would be shown or written")
    if not headless and not display_available():
        _usage("no display to show a window on; use --headless with --out or --jsonl")
    if out is not None and out.suffix.lower() not in VIDEO_CODECS:
        _usage(f"--out {out}: unknown video suffix; use one of {', '.join(VIDEO_CODECS)}")
    _check_outputs(source, out, jsonl)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Our own one-line errors say what failed; OpenCV's and FFmpeg's chatter is for -vv.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

    try:
        scenecam = SceneCam.load(model, threads=threads, spin=False)
    except SceneCamError as exc:
        fail(exc)
    try:
        reader = open_source(source)
    except SceneCamError as exc:
        fail(exc)

    try:
        scenecam.explain_options(target, method, target_space, alpha)  # type: ignore[arg-type]
    except ValueError as exc:
        _usage(f"--target: {exc}")
    settings = CameraSettings(
        method=method,
        alpha=alpha,
        target=target,
        target_space=target_space,  # type: ignore[arg-type]
        every=every,
        max_frames=max_frames,
        realtime=not headless,
        out=out,
        jsonl=_jsonl_target(jsonl),
        snapshot_dir=snapshot_dir,
    )
    stop = threading.Event()
    display: Display | None = None if headless else Window(f"scenecam-edge: {reader.name}")
    try:
        with reader, _stop_on_signals(stop):
            summary = run_camera(scenecam, reader, settings, display=display, stop=stop)
    except SceneCamError as exc:
        fail(exc, EXIT_FAILED_INPUTS)
    except KeyboardInterrupt:  # a second Ctrl-C: the outputs were still closed on the way out
        click.echo("interrupted", err=True)
        sys.exit(130)
    _print_summary(summary)
    if summary.error is not None:
        error_line(summary.source, summary.error)
        sys.exit(EXIT_FAILED_INPUTS)


def _usage(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _check_outputs(source: str, out: Path | None, jsonl: str | None) -> None:
    """Inputs are never overwritten: refuse outputs that are the source or each other."""
    written = [str(p) for p in (out, jsonl) if p is not None and str(p) != "-"]
    real = [os.path.realpath(p) for p in written]
    spec = parse_source(source)
    if spec.kind == "file" and os.path.realpath(str(spec.location)) in real:
        _usage(f"{source}: the output would overwrite the source")
    if len(set(real)) < len(real):
        _usage(f"--out and --jsonl name the same file ({written[0]})")


def _jsonl_target(jsonl: str | None) -> Path | TextIO | None:
    if jsonl is None:
        return None
    return sys.stdout if jsonl == "-" else Path(jsonl)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop``: the loop ends after the current frame. The handler
    then steps aside, so a second signal acts as usual (KeyboardInterrupt, termination)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous: dict[int, _Handler] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signum, _restorable(previous[signum]))

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, _restorable(old))


def _restorable(handler: _Handler) -> Callable[[int, FrameType | None], object] | int:
    """A handler ``signal.signal`` accepts (None means one set outside Python: the default)."""
    return signal.SIG_DFL if handler is None else handler


def _print_summary(summary: CameraSummary) -> None:
    parts = [
        f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} fps)",
        f"{summary.heatmaps} heatmaps",
    ]
    if summary.dropped:
        parts.append(f"{summary.dropped} stale frames dropped")
    if summary.reconnects:
        parts.append(f"{summary.reconnects} reconnects")
    if summary.out is not None:
        parts.append(f"video: {summary.out}")
    parts += [f"snapshot: {p}" for p in summary.snapshots]
    click.echo(f"camera: {', '.join(parts)}; ended: {summary.ended}", err=True)
