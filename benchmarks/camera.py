"""Camera loop speed through the real capture path: OpenCV reading a video file and an MJPEG
stream over loopback HTTP, a heatmap on every 640 x 480 frame.

    python benchmarks/camera.py                      # default model, 300 frames, 10 s streams
    python benchmarks/camera.py --model scenes-mini --rounds 3

Rows (each the median of --rounds runs):
- video file, read in order (``FileSource``, what ``camera --source clip.mp4`` does): every
  frame decoded, converted, classified and explained, the overlay and text drawn;
- video file through the live reader (``LiveSource``): a capture thread decodes as fast as it
  can and the loop takes the newest frame (the rest are dropped);
- loopback MJPEG stream at 120 fps (--stream-fps), faster than the loop, from the stand-in
  camera (tests/mjpeg_camera.py, in a child process, sending 60 pre-encoded frames over and
  over): the live reader on FFmpeg's HTTP client, the loop taking the newest frame;
- the same stream at 30 fps: the CPU the loop's process uses (CPU time / wall time, 100% =
  one core), onnxruntime's spinning off (the camera command) and on;
- latency: the stand-in at 30 fps in this process, the loop serving ``--serve``'s live view,
  and a viewer reading ``/stream.mjpg``: from the stand-in sending a frame, and from the
  capture thread having decoded it (its arrival), to the viewer having that frame, found by
  the frame number stamped in its pixels.
Prints Markdown tables. Needs only the runtime and OpenCV.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.camera import (
    CameraSettings,
    FrameReport,
    FrameSource,
    LiveSource,
    LiveView,
    open_source,
    run_camera,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.mjpeg_camera import MjpegCamera, photo_frames, read_stamp  # noqa: E402

SIZE = (640, 480)


def make_video(path: Path, frames: int, fps: float = 30.0) -> Path:
    frame = photo_frames(SIZE, stamped=False)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, SIZE)
    for i in range(frames):
        writer.write(frame(i))
    writer.release()
    return path


def loop_fps(
    scenecam: SceneCam, source_of: Callable[[], FrameSource], frames: int
) -> tuple[float, int, float]:
    """Frames per second of the loop (heatmap every frame), frames dropped, and this
    process's CPU seconds per processed frame (less sensitive than fps to other load)."""
    with source_of() as source:
        before = _cpu()
        summary = run_camera(scenecam, source, CameraSettings(max_frames=frames))
        cpu = _cpu() - before
    return summary.fps, summary.dropped, cpu / max(1, summary.frames)


def model_only(scenecam: SceneCam, frames: int) -> tuple[float, float]:
    """The reference: ``SceneCam.predict`` with Grad-CAM on one 640 x 480 RGB frame, over
    and over, nothing else. Frames per second and CPU seconds per frame."""
    image = cv2.cvtColor(photo_frames(SIZE, stamped=False)(0), cv2.COLOR_BGR2RGB)
    options = scenecam.explain_options()
    before, start = _cpu(), time.perf_counter()
    for _ in range(frames):
        scenecam.predict([image], ["frame"], explain=options)
    wall = time.perf_counter() - start
    return frames / wall, (_cpu() - before) / frames


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StandIn:
    """The stand-in camera in a child process, so its CPU is not the loop's."""

    def __init__(self, fps: float) -> None:
        script = REPO / "tests" / "mjpeg_camera.py"
        # 60 frames encoded once, then sent over and over: the stand-in's CPU stays small.
        command = [sys.executable, str(script), "--fps", str(fps), "--cache", "60"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def cpu_share(scenecam: SceneCam, url: str, seconds: float) -> tuple[float, float]:
    """CPU time / wall time of this process and the frames processed per second."""
    stop = threading.Event()
    with open_source(url) as source:
        timer = threading.Timer(seconds, stop.set)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        timer.start()
        summary = run_camera(scenecam, source, CameraSettings(), stop=stop)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / wall, summary.frames / wall


def latency(scenecam: SceneCam, frames: int) -> tuple[list[float], list[float]]:
    """Seconds from the stand-in sending a frame, and from its arrival in the loop, to a
    viewer of the live view having it decoded."""
    arrived: dict[int, float] = {}
    stop = threading.Event()
    end_to_end: list[float] = []
    in_loop: list[float] = []
    with MjpegCamera(photo_frames(SIZE), fps=30) as camera, LiveView(port=0) as view:

        def on_frame(report: FrameReport) -> None:
            arrived[report.source_index] = report.arrived
            view.publish(report)

        source = open_source(camera.url)
        loop = threading.Thread(
            target=run_camera,
            args=(scenecam, source, CameraSettings()),
            kwargs={"stop": stop, "on_frame": on_frame},
        )
        loop.start()
        try:
            with urllib.request.urlopen(view.url + "stream.mjpg", timeout=30) as stream:
                for _ in range(frames + 10):
                    image = _read_part(stream)
                    now = time.monotonic()
                    n = read_stamp(image)  # one connection: frame number = source index
                    if n in arrived and n in camera.sent_at:
                        end_to_end.append(now - camera.sent_at[n])
                        in_loop.append(now - arrived[n])
        finally:
            stop.set()
            loop.join(60)
            source.close()
    return end_to_end[10:], in_loop[10:]  # after the first ten (warm-up)


def _read_part(stream: Any) -> np.ndarray:
    length = None
    while True:
        line = stream.readline()
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line == b"\r\n" and length is not None:
            data = stream.read(length)
            return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def ms(values: list[float], q: float) -> str:
    return f"{1000 * float(np.quantile(values, q)):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300, help="Frames per fps row.")
    parser.add_argument("--rounds", type=int, default=3, help="Runs per row (median).")
    parser.add_argument("--seconds", type=float, default=10.0, help="Per CPU row.")
    parser.add_argument("--model", default=None, help="Bundle (default: the shipped default).")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads.")
    parser.add_argument(
        "--stream-fps", type=float, default=120.0, help="The fast stream's rate (0: unpaced)."
    )
    args = parser.parse_args()
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

    quiet = SceneCam.load(args.model, threads=args.threads, spin=False)
    spinning = SceneCam.load(args.model, threads=args.threads, spin=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    fps: dict[str, list[float]] = {"model": [], "file": [], "live file": [], "stream": []}
    dropped: dict[str, list[int]] = {k: [] for k in fps}
    cpu_frame: dict[str, list[float]] = {k: [] for k in fps}
    cpu: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "input.mp4", args.frames)
        long = make_video(Path(tmp) / "long.mp4", 20 * args.frames)  # outlasts the loop
        sources: dict[str, Callable[[], FrameSource]] = {
            "file": lambda: open_source(str(video)),
            "live file": lambda: LiveSource("long.mp4", cv2.VideoCapture(str(long))),
        }
        loop_fps(quiet, sources["file"], 20)  # warm-up
        with StandIn(args.stream_fps) as fast:
            sources["stream"] = lambda: open_source(fast.url)
            for _ in range(args.rounds):
                rate, cpu_each = model_only(quiet, args.frames)
                fps["model"].append(rate)
                dropped["model"].append(0)
                cpu_frame["model"].append(cpu_each)
                for key, source_of in sources.items():
                    rate, drops, cpu_each = loop_fps(quiet, source_of, args.frames)
                    fps[key].append(rate)
                    dropped[key].append(drops)
                    cpu_frame[key].append(cpu_each)
        with StandIn(30) as steady:
            for _ in range(args.rounds):
                cpu["off"].append(cpu_share(quiet, steady.url, args.seconds))
                cpu["on"].append(cpu_share(spinning, steady.url, args.seconds))
    sent, arrival = latency(quiet, args.frames)

    print(
        f"\n{quiet.manifest.name}, {SIZE[0]}x{SIZE[1]}, heatmap on every frame, "
        f"{quiet.config.resolved_threads()} onnxruntime threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, OpenCV {cv2.__version__}; "
        f"load average before: {load}\n"
    )
    print("| camera loop, real capture path | fps | frames dropped | CPU ms / frame |")
    print("|---|---:|---:|---:|")
    labels = {
        "model": "reference: `SceneCam.predict` with Grad-CAM alone, no loop",
        "file": "video file, read in order (every frame)",
        "live file": "video file through the live reader",
        "stream": f"loopback MJPEG stream at {args.stream_fps:g} fps",
    }
    for key, label in labels.items():
        rate, drops = statistics.median(fps[key]), statistics.median(dropped[key])
        each = 1000 * statistics.median(cpu_frame[key])
        print(f"| {label} | {rate:.1f} | {drops:.0f} | {each:.1f} |")
    print("\n| waiting on a 30 fps MJPEG stream | CPU time / wall time | frames / s |")
    print("|---|---:|---:|")
    for key, label in (("off", "spinning off (the camera command)"), ("on", "spinning on")):
        share = statistics.median(c for c, _ in cpu[key])
        rate = statistics.median(r for _, r in cpu[key])
        print(f"| onnxruntime {label} | {share:.0%} | {rate:.1f} |")
    print(f"\n| latency to a live-view viewer ({len(sent)} frames) | median ms | p90 ms |")
    print("|---|---:|---:|")
    print(f"| from the stand-in camera sending the frame | {ms(sent, 0.5)} | {ms(sent, 0.9)} |")
    print(f"| from its arrival in the loop (decoded) | {ms(arrival, 0.5)} | {ms(arrival, 0.9)} |")


if __name__ == "__main__":
    main()
