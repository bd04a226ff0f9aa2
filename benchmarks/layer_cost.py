"""What a finer map costs: classify, explain at the default layer (5x5, closed-form head) and
explain at an extra layer (stage 3, 10x10, VJP graph), side by side in one run, at batch 1
on the sample photos, rounds interleaved so that load on the machine hits every variant alike.

    python benchmarks/layer_cost.py [--model models/scenes-resnet18] [--rounds 6] [--threads 2]

Prints the median milliseconds per photo of each variant and the ratios to classify-only and
to the default layer's explain. ``--model`` defaults to the float model and the int8 default
both (the float one is in the repository, not in the installed package).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scenecam_edge import SceneCam
from scenecam_edge.images import load_image

REPO = Path(__file__).resolve().parents[1]


def variants(cam: SceneCam, label: str) -> dict[str, Callable[[np.ndarray], object]]:
    default, *extra = cam.layers
    out: dict[str, Callable[[np.ndarray], object]] = {
        f"{label}: classify": cam.classify,
        f"{label}: explain {default.name} ({default.map_size})": cam.explain,
    }
    for layer in extra:
        out[f"{label}: explain {layer.name} ({layer.map_size})"] = lambda photo, name=layer.name: (
            cam.explain(photo, layer=name)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    models = args.model or [str(REPO / "models" / "scenes-resnet18"), None]
    photos = [load_image(p) for p in sorted((REPO / "samples" / "scenes").glob("*.jpg"))]
    runs: dict[str, Callable[[np.ndarray], object]] = {}
    groups: list[list[str]] = []
    for model in models:
        cam = SceneCam.load(model, threads=args.threads)
        group = variants(cam, cam.manifest.name)
        runs.update(group)
        groups.append(list(group))
    for run in runs.values():  # warm-up: memory planning, thread pools
        for photo in photos[:3]:
            run(photo)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for photo in photos:
                run(photo)
            times[name].append((time.perf_counter() - start) / len(photos))
    print(f"{args.threads} threads, {len(photos)} photos x {args.rounds} rounds, batch 1")
    print("| variant | ms per photo | vs classify | vs default explain |")
    print("|---|---:|---:|---:|")
    for group in groups:
        base, default = (float(np.median(times[n])) for n in group[:2])
        for name in group:
            m = float(np.median(times[name]))
            print(f"| {name} | {1000 * m:.2f} | {m / base:.2f}x | {m / default:.2f}x |")


if __name__ == "__main__":
    main()
