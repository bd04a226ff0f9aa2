"""Cost of each CAM method: time per image over the classify-only time, batch 1, one run.

    python benchmarks/methods.py [--model NAME|DIR] [--images 24] [--rounds 5]

Runtime only (no TensorFlow). Methods and classify run interleaved in every round; medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from scenecam_edge import METHODS, SceneCam

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    cam = SceneCam.load(args.model, threads=args.threads)
    paths = sorted((REPO / "samples" / "scenes").glob("*.jpg"))
    images = [
        cam.to_input(cam.load_image(p))
        for p in (paths * (args.images // len(paths) + 1))[: args.images]
    ]
    runs: dict[str, object] = {
        "classify": None,
        **{m: cam.explain_options(method=m) for m in METHODS},
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for options in runs.values():  # warm up
        cam.predict(images[:2], ["x", "x"], explain=options)  # type: ignore[call-overload]
    for _ in range(args.rounds):
        for name, options in runs.items():
            start = time.perf_counter()
            for img in images:
                cam.predict([img], ["x"], explain=options)  # type: ignore[call-overload]
            times[name].append((time.perf_counter() - start) * 1000 / len(images))
    ms = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"Model: {cam.manifest.name}, {len(images)} images x {args.rounds} rounds, batch 1, median ms per image\n"
    )
    print("| method | ms / image | over classify |")
    print("|---|---:|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.2f} | {value / ms['classify']:.2f}x |")


if __name__ == "__main__":
    main()
