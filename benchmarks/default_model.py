"""Candidate default models side by side: explain at batch 1 on the sample photos, idle and
under load, with onnxruntime's spinning threads on and off.

    python benchmarks/default_model.py [--rounds 5] [--load 4] [--models A,B,...]

"Under load" starts ``--load`` child processes that keep a core busy each (numpy matrix
products, one thread each) for the length of that phase, the situation of an edge box that
also decodes video or serves requests: a 2-core machine then has a load of 4-5. Rounds
interleave the models, so load on the machine hits all alike. Prints the median
milliseconds per explained photo and each model's speed relative to the first.
Run from a clone: float bundles live in the repository (models/), not in the package.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path

from scenecam_edge import SceneCam
from scenecam_edge.images import load_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = "scenes-resnet18-int8,scenes-lite0,scenes-lite0-int8"


def _burn(stop: mp.synchronize.Event) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    while not stop.is_set():
        a = (a @ a) / 256.0


def _bundle(name: str) -> str | Path:
    local = REPO / "models" / name
    return local if (local / "manifest.json").is_file() else name


def measure(models: list[str], spin: bool, rounds: int, photos: list) -> dict[str, float]:
    """Rounds interleave the models, and only one model is loaded at a time: a session's
    spinning threads go on spinning for a while after its run, and would steal the cores
    from the next model's run (with every model loaded at once, spinning looked slower than
    it is)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name in models:
            cam = SceneCam.load(_bundle(name), spin=spin)
            for photo in photos[:3]:  # warm-up: memory planning, thread pools
                cam.explain(photo)
            start = time.perf_counter()
            for photo in photos:
                cam.explain(photo)
            times[name].append((time.perf_counter() - start) / len(photos) * 1000)
            del cam
            gc.collect()
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--load", type=int, default=4, help="busy processes under load")
    parser.add_argument("--models", default=DEFAULT_MODELS)
    args = parser.parse_args()
    models = args.models.split(",")
    photos = [load_image(p) for p in sorted((REPO / "samples" / "scenes").glob("*.jpg"))]
    rows = []
    for loaded in (False, True):
        stop = mp.Event()
        burners = [
            mp.Process(target=_burn, args=(stop,)) for _ in range(args.load if loaded else 0)
        ]
        for p in burners:
            p.start()
        try:
            for spin in (True, False):
                ms = measure(models, spin, args.rounds, photos)
                rows.append((loaded, spin, ms))
        finally:
            stop.set()
            for p in burners:
                p.join()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, VNNI: {'yes' if vnni else 'no'}")
    print(f"explain at batch 1, ms per photo (median of {args.rounds} rounds of 12 photos)")
    base = models[0]
    print("| machine | spinning | " + " | ".join(models) + " |")
    print("|---|---|" + "---:|" * len(models))
    for loaded, spin, ms in rows:
        cells = [f"{ms[m]:.1f} ({ms[base] / ms[m]:.2f}x)" for m in models]
        state = f"{args.load} busy processes" if loaded else "idle"
        print(f"| {state} | {'on' if spin else 'off'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
