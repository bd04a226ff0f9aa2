"""Camera loop speed: end-to-end frames per second on a video file, and the CPU the loop uses
while it waits on a slow live source, with onnxruntime's spinning off and on.

    python benchmarks/camera.py                       # 300 frames, 640 x 480, default model
    python benchmarks/camera.py --frames 600 --rounds 5 --model scenes-mini

Rows, each the median of --rounds interleaved runs:
- heatmap every frame: decode, BGR to RGB, SceneCam.predict with Grad-CAM, overlay, label and
  fps text, mp4v encode. This is ``run_camera``, the code ``scenecam-edge camera --headless
  --out`` runs; the annotated video is read back to check that it has every frame.
- heatmap every 5 frames (``--every 5``); labels only (heatmap off), for reference.
- idle CPU: a fake live source that yields a frame every 200 ms (5 fps), a heatmap on every
  frame; process CPU time / wall time over the run (100% = one core busy), for sessions
  loaded with spin=False (what the camera command uses) and spin=True.
Prints a Markdown table. Needs only the runtime.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.camera import CameraSettings, LiveSource, open_source, run_camera

REPO = Path(__file__).resolve().parents[1]
SIZE = (640, 480)


def make_video(path: Path, frames: int, fps: float = 30.0) -> Path:
    """The sample photos panning sideways, a new photo every 10 frames."""
    photos = [
        cv2.resize(cv2.imread(str(p)), SIZE)
        for p in sorted((REPO / "samples" / "scenes").glob("*.jpg"))
    ]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, SIZE)
    for i in range(frames):
        writer.write(np.roll(photos[(i // 10) % len(photos)], 8 * i, axis=1))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.grab():
        n += 1
    capture.release()
    return n


def end_to_end(scenecam: SceneCam, video: Path, out: Path, every: int, heatmap: bool) -> float:
    """Seconds from opening the file to the annotated video closed on disk."""
    settings = CameraSettings(every=every, heatmap=heatmap, out=out)
    start = time.perf_counter()
    with open_source(str(video)) as source:
        summary = run_camera(scenecam, source, settings)
    seconds = time.perf_counter() - start
    frames = count_frames(out)
    if frames != summary.frames:
        raise RuntimeError(f"{out} has {frames} frames, the loop processed {summary.frames}")
    return seconds


class SlowCapture:
    """A live source that delivers a frame every ``period`` seconds, like a 5 fps camera."""

    def __init__(self, frame: np.ndarray, period: float) -> None:
        self.frame, self.period = frame, period
        self._next = time.monotonic()

    def isOpened(self) -> bool:
        return True

    def get(self, propId: int) -> float:
        return 1 / self.period

    def release(self) -> None:
        pass

    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray | None]:
        self._next += self.period
        time.sleep(max(0.0, self._next - time.monotonic()))
        return True, self.frame.copy()


def idle_cpu(scenecam: SceneCam, frame: np.ndarray, frames: int, period: float) -> float:
    """Process CPU time / wall time while the loop runs on a slow live source."""
    source = LiveSource("slow camera", SlowCapture(frame, period))
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    try:
        run_camera(scenecam, source, CameraSettings(max_frames=frames), stop=threading.Event())
    finally:
        source.close()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300, help="Frames in the test video.")
    parser.add_argument("--rounds", type=int, default=3, help="Runs per row (median).")
    parser.add_argument("--model", default=None, help="Bundle (default: the shipped default).")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads.")
    parser.add_argument(
        "--idle-frames", type=int, default=15, help="Frames from the 5 fps source per run."
    )
    args = parser.parse_args()

    quiet = SceneCam.load(args.model, threads=args.threads, spin=False)
    spinning = SceneCam.load(args.model, threads=args.threads, spin=True)
    rows: dict[str, list[float]] = {"every frame": [], "every 5": [], "off": []}
    idle: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "input.mp4", args.frames)
        out = Path(tmp) / "annotated.mp4"
        end_to_end(quiet, make_video(Path(tmp) / "warm.mp4", 20), out, 1, True)  # warm-up
        for _ in range(args.rounds):
            rows["every frame"].append(end_to_end(quiet, video, out, 1, True))
            rows["every 5"].append(end_to_end(quiet, video, out, 5, True))
            rows["off"].append(end_to_end(quiet, video, out, 1, False))
        frame = cv2.resize(cv2.imread(str(REPO / "samples" / "scenes" / "forest_8.jpg")), SIZE)
        for _ in range(max(1, args.rounds - 1)):
            idle["off"].append(idle_cpu(quiet, frame, args.idle_frames, 0.2))
            idle["on"].append(idle_cpu(spinning, frame, args.idle_frames, 0.2))

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\n{quiet.manifest.name}, {SIZE[0]}x{SIZE[1]} mp4v, {args.frames} frames, "
        f"{quiet.config.resolved_threads()} onnxruntime threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; load average before: {load}\n"
    )
    print("| camera loop, video file to annotated video | ms / frame | fps |")
    print("|---|---:|---:|")
    labels = {
        "every frame": "heatmap every frame",
        "every 5": "heatmap every 5 frames (`--every 5`)",
        "off": "labels only (heatmap off)",
    }
    for key, label in labels.items():
        seconds = statistics.median(rows[key])
        print(f"| {label} | {seconds * 1000 / args.frames:.2f} | {args.frames / seconds:.0f} |")
    print(
        f"\n| waiting on a 5 fps live source ({args.idle_frames} frames, heatmap every frame) "
        "| CPU time / wall time |"
    )
    print("|---|---:|")
    print(f"| onnxruntime spinning off (the camera loop) | {statistics.median(idle['off']):.1%} |")
    print(f"| onnxruntime spinning on | {statistics.median(idle['on']):.1%} |")


if __name__ == "__main__":
    main()
