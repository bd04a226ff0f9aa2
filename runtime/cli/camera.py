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
from typing import TYPE_CHECKING, NoReturn, TextIO

import click

from ..cam import TargetSpace
from ..errors import SceneCamError
from ..names import REASON_MAX, shown
from .common import (
    EXIT_FAILED_INPUTS,
    EXIT_USAGE,
    cam_options,
    error_line,
    explain_options,
    fail,
    load_model,
    model_options,
    refuse_unused_map_flags,
    renamed_option,
    tta_option,
    with_renamed,
)
from .interrupts import EXIT_SIGNAL_BASE

if TYPE_CHECKING:
    from ..camera import CameraSummary, Display, LiveView, SourceSpec

#: The suffixes ``--out`` takes (``scenecam_edge.camera.VIDEO_CODECS``, which needs OpenCV:
#: the help must not import it; a test checks that the two agree).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi")

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
    help=f"Write the annotated video here ({', '.join(VIDEO_SUFFIXES)}).",
)
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Write one JSON object per processed frame here ('-': stdout).",
)
@click.option("--json", "as_json", is_flag=True, help="The JSON lines on stdout (--jsonl -).")
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Compute the heatmap every N frames and reuse it between (labels: every frame).",
)
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option(
    "--serve",
    metavar="[HOST:]PORT",
    default=None,
    help="Serve a live view over HTTP: / (a page), /stream.mjpg, /latest.json. "
    "HOST defaults to 127.0.0.1 (this machine only).",
)
@click.option(
    "--max-viewers",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="--serve: how many may watch the stream at once (one more gets 503).",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    metavar="NAME",
    multiple=True,
    help="--serve: also answer requests for this host name (repeatable); others get 421. "
    "By default: the bound name or address (and localhost on loopback).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Network streams: seconds to wait to open the stream, and for each frame.",
)
@cam_options(alpha=True)
@tta_option
@click.option(
    "--heatmaps",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Where the s key saves PNG snapshots of the annotated frame [default: .].",
)
@renamed_option(
    "--snapshot-dir", "--heatmaps", "heatmaps", type=click.Path(file_okay=False, path_type=Path)
)
def camera(
    source: str,
    model: str | None,
    threads: int | None,
    headless: bool,
    out: Path | None,
    jsonl: str | None,
    as_json: bool,
    every: int,
    max_frames: int | None,
    serve: str | None,
    max_viewers: int,
    allow_hosts: tuple[str, ...],
    timeout: float,
    target: str | None,
    target_space: TargetSpace,
    method: str,
    layer: str | None,
    max_channels: int,
    tta: bool,
    alpha: float,
    heatmaps: Path | None,
) -> None:
    """Classify every frame of a camera, video file or stream and blend its heatmap over it.

    A window shows the overlay, the label, the confidence and the frame rate. Keys: h heatmap
    on/off, m next CAM method, s save a PNG snapshot, q or Esc quit. With --headless nothing
    is shown; --out writes the annotated video, --jsonl one line per frame, and --serve
    serves the annotated frames and the latest result to browsers.

    A video file is processed frame by frame, none skipped (in a window or served at its own
    frame rate, else as fast as the model goes); a file that ends before the frame count
    its container declares is reported as damaged. A camera or stream is read by a capture
    thread that keeps only the newest frame, so a slow model never builds up lag; a stream
    that drops is reopened with backoff. Ctrl-C or SIGTERM ends the loop after the current
    frame, with the video and the JSON lines complete. Outputs are written under temporary
    names and renamed at the end; a failed write stops the loop.

    Exit codes: 0 the loop ended (end of file, --max-frames, q); 130 Ctrl-C, 143 SIGTERM
    (the outputs are finished first, as for any ending); 1 the
    source failed after it opened (a damaged file, a stream that could not be reconnected,
    a camera that stopped) or an output could not be written; 2 usage error, or an output
    that cannot be created; 3 the model or the source could not be opened.
    """
    try:
        from .. import camera as cam  # OpenCV: the camera extra
    except ImportError as exc:
        if exc.name != "cv2":
            raise
        fail(
            "the camera command needs OpenCV; install it with: pip install "
            "'scenecam-edge[camera]' (or 'scenecam-edge[camera-headless]' on a machine "
            "without a display)"
        )
    if as_json and jsonl not in (None, "-"):
        _usage("--json prints the JSON lines, --jsonl FILE writes them: give one")
    jsonl = "-" if as_json else jsonl
    if headless and out is None and jsonl is None and serve is None:
        _usage("--headless needs --out, --jsonl or --serve: nothing would be shown or written")
    if not headless and not cam.display_available():
        _usage("no display to show a window on; use --headless with --out, --jsonl or --serve")
    if out is not None and out.suffix.lower() not in VIDEO_SUFFIXES:
        _usage(f"--out {out}: unknown video suffix; use one of {', '.join(VIDEO_SUFFIXES)}")
    address = _address(serve)
    # maps are shown in the window, the video and the live view; JSON lines alone show none
    shows_maps = not headless or out is not None or address is not None
    refuse_unused_map_flags(shows_maps, "a window, --out or --serve", also=("target", "every"))
    _check_outputs(cam.parse_source(source), out, jsonl)
    for path in (out, None if jsonl in (None, "-") else Path(jsonl)):
        if path is not None:
            try:
                cam.outputs.probe_output(path)
            except SceneCamError as exc:
                fail(exc, EXIT_USAGE)
    _quiet_opencv()

    snapshot_dir = with_renamed("heatmaps", heatmaps, "--heatmaps") or Path(".")
    scenecam = load_model(model, threads, spin=False, tta=tta)
    # refused here, not mid-loop; the loop gets the record whole
    options = explain_options(scenecam, target, method, target_space, alpha, max_channels, layer)
    try:
        reader = cam.open_source(source, timeout=timeout)
    except SceneCamError as exc:
        fail(exc)
    settings = cam.CameraSettings(
        explain=options,
        heatmap=shows_maps,
        every=every,
        max_frames=max_frames,
        realtime=not headless or address is not None,
        out=out,
        jsonl=_jsonl_target(jsonl),
        snapshot_dir=snapshot_dir,
    )
    stop = threading.Event()
    received: list[int] = []
    view: LiveView | None = None
    try:
        with reader, _stop_on_signals(stop, received):
            if address is not None:
                view = _serve(address, reader.name, max_viewers, allow_hosts)
            display: Display | None = None
            if not headless:
                display = cam.Window(f"scenecam-edge: {reader.name}")
            on_frame = view.publish if view is not None else None
            summary = cam.run_camera(
                scenecam, reader, settings, display=display, stop=stop, on_frame=on_frame
            )
    except SceneCamError as exc:
        fail(exc, EXIT_FAILED_INPUTS)
    except KeyboardInterrupt:  # a second Ctrl-C: the outputs were still closed on the way out
        click.echo("interrupted: the outputs were closed on the way out", err=True)
        sys.exit(EXIT_SIGNAL_BASE + signal.SIGINT)
    finally:
        if view is not None:
            view.close()
    _print_summary(summary)
    if summary.error is not None:
        error_line(summary.source, summary.error)
        sys.exit(EXIT_FAILED_INPUTS)
    if received:  # the summary said what was written, and where
        sys.exit(EXIT_SIGNAL_BASE + received[0])


def _quiet_opencv() -> None:
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        import cv2

        # Our own one-line errors say what failed; OpenCV's and FFmpeg's chatter is for -vv.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def _address(serve: str | None) -> tuple[str, int] | None:
    if serve is None:
        return None
    from ..camera import parse_address

    try:
        return parse_address(serve)
    except ValueError as exc:
        _usage(f"--serve: {exc}")


def _serve(
    address: tuple[str, int], name: str, max_viewers: int, allow_hosts: tuple[str, ...]
) -> LiveView:
    from ..camera import LiveView

    try:
        view = LiveView(*address, source=name, max_viewers=max_viewers, allow_hosts=allow_hosts)
    except OSError as exc:
        fail(f"--serve {address[0]}:{address[1]}: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(f"camera: live view at {view.url}", err=True)
    return view


def _usage(message: str) -> NoReturn:
    click.echo(f"error: {shown(message, REASON_MAX)}", err=True)
    sys.exit(EXIT_USAGE)


def _check_outputs(spec: SourceSpec, out: Path | None, jsonl: str | None) -> None:
    """Inputs are never overwritten: refuse outputs that are the source or each other."""
    written = [str(p) for p in (out, jsonl) if p is not None and str(p) != "-"]
    real = [os.path.realpath(p) for p in written]
    if spec.kind == "file" and os.path.realpath(str(spec.location)) in real:
        _usage(f"{spec.text}: the output would overwrite the source")
    if len(set(real)) < len(real):
        _usage(f"--out and --jsonl name the same file ({written[0]})")


def _jsonl_target(jsonl: str | None) -> Path | TextIO | None:
    if jsonl is None:
        return None
    return sys.stdout if jsonl == "-" else Path(jsonl)


@contextmanager
def _stop_on_signals(stop: threading.Event, received: list[int]) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop`` (and go into ``received``): the loop ends after the
    current frame. The handler then steps aside, so a second signal acts as usual
    (KeyboardInterrupt, termination)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous: dict[int, _Handler] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        received.append(signum)
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
