"""The default (int8) against its float twin, side by side in one run: explain at batch 1 on
the sample photos, rounds interleaved so that load on the machine hits both alike.

    python benchmarks/int8_default.py [--rounds 6] [--threads 2]

Prints the median milliseconds per explained photo of each and their ratio. Run from a clone:
the float model is in the repository (models/scenes-resnet18), not in the installed package.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.images import load_image

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    photos = [load_image(p) for p in sorted((REPO / "samples" / "scenes").glob("*.jpg"))]
    cams = {
        "float (scenes-resnet18)": SceneCam.load(
            REPO / "models" / "scenes-resnet18", threads=args.threads
        ),
        "int8 (scenes-resnet18-int8, the default)": SceneCam.load(threads=args.threads),
    }
    for cam in cams.values():  # warm-up: memory planning, thread pools
        for photo in photos[:3]:
            cam.explain(photo)
    times: dict[str, list[float]] = {name: [] for name in cams}
    for _ in range(args.rounds):
        for name, cam in cams.items():
            start = time.perf_counter()
            for photo in photos:
                cam.explain(photo)
            times[name].append((time.perf_counter() - start) / len(photos))
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    print(
        f"{platform.processor() or platform.machine()}, VNNI: {'yes' if vnni else 'no'}, "
        f"{args.threads} threads, {len(photos)} photos x {args.rounds} rounds"
    )
    medians = {name: float(np.median(t)) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name:45s} {1000 * m:7.2f} ms per explained photo")
    f, q = medians.values()
    print(f"int8 is {f / q:.2f}x the float model's speed")


if __name__ == "__main__":
    main()
