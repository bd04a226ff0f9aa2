"""Satellite scenes: tiles against batch, memory on a large scene, Ray against one machine.

    python benchmarks/tiles.py                                   # all three, defaults
    python benchmarks/tiles.py --only speed --scene 3000 --rounds 3
    python benchmarks/tiles.py --only memory --big 10000 --model scenes-mini
    python benchmarks/tiles.py --only ray --scenes 6 --scene-size 1500 --model scenes-mini

Measures, each as child processes of this script, side by side in one run:
  speed: `scenecam-edge tiles` on a SIDE x SIDE GeoTIFF of 150 px photos against
    `scenecam-edge batch` on the same photos as JPEGs, the same tile count (both report
    their own rate, model loading excluded; tiles includes opening, writing and the COG
    copies). Goal: tiles/s >= 0.9 x images/s. Rounds interleave the two.
  memory: peak resident memory (ru_maxrss) of `tiles` on a BIG x BIG scene against a
    1500 x 1500 one: bounded by a row of tiles, it should not grow with the scene.
  ray: scenes per minute for N scenes with `classify_scenes` on a local Ray instance (every
    CPU) against `scenecam-edge tiles --out-dir` over the same scenes (wall time, model
    loading and Ray's start included in both).
Needs the geo extra (and the ray extra for the last). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import child, make_photos, make_scene, rate

RAY_JOB = """
import sys, time, logging
import ray
from scenecam_edge.integrations.ray import classify_scenes
start = time.perf_counter()
ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
started = time.perf_counter()
outcomes = classify_scenes([sys.argv[1]], sys.argv[2], model=sys.argv[3] or None, num_cpus=1)
end = time.perf_counter()
ray.shutdown()
assert all(o.summary for o in outcomes), [o.error for o in outcomes]
print(len(outcomes), started - start, end - start)
"""


def photos_for(folder: Path, count: int) -> list[np.ndarray]:
    paths = sorted(folder.glob("*.jpg"))[:count]
    return [np.asarray(Image.open(p).convert("RGB").resize((150, 150))) for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["speed", "memory", "ray"], action="append")
    parser.add_argument("--model", default=None, help="Bundle name or folder (default model).")
    parser.add_argument("--scene", type=int, default=3000, help="speed: scene side in px.")
    parser.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds.")
    parser.add_argument("--big", type=int, default=10000, help="memory: the large scene's side.")
    parser.add_argument("--scenes", type=int, default=6, help="ray: number of scenes.")
    parser.add_argument("--scene-size", type=int, default=1500, help="ray: each scene's side.")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    parts = set(args.only or ["speed", "memory", "ray"])
    exe = shutil.which("scenecam-edge") or str(Path(sys.executable).parent / "scenecam-edge")
    model_arg = ["--model", args.model] if args.model else []
    batch_arg = ["--batch-size", str(args.batch_size)]
    tmp = Path(tempfile.mkdtemp(prefix="tiles-bench-"))
    rows: list[tuple[str, str, str]] = []
    try:
        tiles_count = (args.scene // 150) ** 2
        origin = make_photos(tmp / "photos", tiles_count)
        photos = photos_for(tmp / "photos", tiles_count)
        if "speed" in parts:
            scene = tmp / "scene.tif"
            make_scene(scene, args.scene // 150 * 150, photos)
            tile_rates, batch_rates = [], []
            for k in range(args.rounds):
                _, _, err = child(
                    [exe, "batch", str(tmp / "photos"), "--out", str(tmp / f"b{k}.jsonl"),
                     *batch_arg, *model_arg]
                )  # fmt: skip
                batch_rates.append(rate(err, "images"))
                _, _, err = child(
                    [exe, "tiles", str(scene), "--out", str(tmp / f"t{k}.tif"), *batch_arg,
                     *model_arg]
                )  # fmt: skip
                tile_rates.append(rate(err, "tiles"))
            t, b = statistics.median(tile_rates), statistics.median(batch_rates)
            rows.append(
                (
                    f"`tiles` vs `batch`, {tiles_count} tiles / images ({origin})",
                    f"{t:.1f} tiles/s vs {b:.1f} images/s",
                    f"{t / b:.2f} (goal >= 0.9)",
                )
            )
        if "memory" in parts:
            big, small = tmp / "big.tif", tmp / "small.tif"
            make_scene(big, args.big, photos[:200])
            make_scene(small, 1500, photos[:200])
            results = []
            for path in (small, big):
                wall, rss, err = child(
                    [exe, "tiles", str(path), "--out", str(tmp / f"{path.stem}-map.tif"),
                     *batch_arg, *model_arg]
                )  # fmt: skip
                results.append((rss, rate(err, "tiles"), wall))
            (small_rss, _, _), (big_rss, big_rate, big_wall) = results
            rows.append(
                (
                    f"`tiles` peak RSS, {args.big} x {args.big} px "
                    f"({math.ceil(args.big / 150) ** 2} tiles) vs 1500 x 1500",
                    f"{big_rss:.0f} MB vs {small_rss:.0f} MB",
                    f"{big_rss / small_rss:.2f}; {big_rate:.0f} tiles/s, {big_wall:.0f} s wall",
                )
            )
        if "ray" in parts:
            folder = tmp / "scenes"
            folder.mkdir()
            for i in range(args.scenes):
                shifted = photos[i:] + photos[:i]
                make_scene(folder / f"s{i}.tif", args.scene_size, shifted)
            start = time.perf_counter()
            subprocess.run(
                [exe, "tiles", str(folder), "--out-dir", str(tmp / "local"), *batch_arg, *model_arg],
                check=True, capture_output=True,
            )  # fmt: skip
            local = time.perf_counter() - start
            proc = subprocess.run(
                [sys.executable, "-c", RAY_JOB, str(folder), str(tmp / "ray"), args.model or ""],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            count, init, total = (float(v) for v in proc.stdout.split()[-3:])
            ray_rate, local_rate = count / total * 60, args.scenes / local * 60
            warm_rate = count / (total - init) * 60
            what = f"{args.scenes} scenes of {args.scene_size}^2 px"
            rows += [
                (
                    f"scenes/min, {what}: local Ray ({os.cpu_count()} CPUs, a task per scene) "
                    "vs `tiles --out-dir`, wall time with start-up",
                    f"{ray_rate:.1f} vs {local_rate:.1f} scenes/min",
                    f"{ray_rate / local_rate:.2f}",
                ),
                (
                    f"the same, Ray timed after `ray.init` ({init:.1f} s)",
                    f"{warm_rate:.1f} vs {local_rate:.1f} scenes/min",
                    f"{warm_rate / local_rate:.2f}",
                ),
            ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nmodel {args.model or 'default'}, batch size {args.batch_size}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print("| measure | value | ratio |")
    print("|---|---|---|")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
