"""Batch and tile throughput, side by side in one run, and the tiler's peak memory.

    python benchmarks/batch.py                     # 1000 photos, a 6000 x 6000 scene
    python benchmarks/batch.py --images 300 --scene 3000 --rounds 1

Measures, with the shipped default model (or --model) and the same batch size everywhere:
  model alone: SceneCam.predict on images decoded and resized beforehand (no I/O);
  batch engine: BatchJob over the folder in this process (listing, decoding in threads,
    inference, JSON lines written), so the ratio to the model alone is what the pipeline
    keeps of the model's speed (target >= 0.85);
  batch command: `scenecam-edge batch` as a child process (its own images/s, model loading
    excluded, and the wall time with start-up);
  tiles command: `scenecam-edge tiles` on a synthetic GeoTIFF as a child process: tiles/s
    against the batch command's images/s (target >= 0.85), and its peak resident memory
    (ru_maxrss of that child; target < 500 MB) with and without a heatmap mosaic.
Photos come from ../shared/data/intel-scenes/train (150 x 150 JPEGs) when present, else are
generated. Prints a Markdown table. Needs the geo extra for the tiles rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "intel-scenes" / "train"


def make_photos(folder: Path, n: int) -> str:
    folder.mkdir(parents=True)
    paths = sorted(DATA.rglob("*.jpg")) if DATA.is_dir() else []
    if paths:
        step = max(1, len(paths) // n)
        for i, src in enumerate(paths[::step][:n]):
            shutil.copy(src, folder / f"{i:05d}_{src.name}")
        return f"{n} JPEGs from {DATA.name}/"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:150]
    for i in range(n):
        base = rng.uniform(0, 255, 3)
        img = (base + 60 * np.sin(xx[..., None] / (5 + i % 9) + yy[..., None] / 7)).clip(0, 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return f"{n} generated 150 x 150 JPEGs"


def make_scene(path: Path, size: int, photos: list[np.ndarray]) -> None:
    """A size x size RGB GeoTIFF of photos (150 px), written one row of photos at a time."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 5_000_000, 10, 10),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    k = 0
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, 150):
            h = min(150, size - y)
            row = np.zeros((3, h, size), np.uint8)
            for x in range(0, size, 150):
                w = min(150, size - x)
                row[:, :, x : x + w] = np.moveaxis(photos[k % len(photos)][:h, :w], -1, 0)
                k += 1
            dst.write(row, window=Window(0, y, size, h))


# Linux carries the RSS high-water mark of the mm a process had before exec into its
# ru_maxrss, and subprocess starts children with vfork from this (large) process; so the
# command runs under a small launcher that forks and execs it, and reports its rusage.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def child(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; returns (wall seconds, peak RSS in MB of that command, its stderr)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    maxrss_kb, code = (int(v) for v in proc.stdout.split()[-2:])
    if code not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{proc.stderr}")
    return wall, maxrss_kb / 1024, proc.stderr


def rate(stderr: str, unit: str) -> float:
    match = re.search(rf"\(([\d.]+) {unit}/s\)", stderr)
    if match is None:
        raise RuntimeError(f"no {unit}/s in:\n{stderr}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--scene", type=int, default=6000, help="Scene side in pixels.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads.")
    parser.add_argument(
        "--model", default=None, help="A shipped model's name or a bundle (default: the default)."
    )
    args = parser.parse_args()

    from scenecam_edge import SceneCam
    from scenecam_edge.batch import BatchJob, ResultsFile
    from scenecam_edge.sources import iter_sources

    tmp = Path(tempfile.mkdtemp(prefix="scenecam-batch-bench-"))
    folder = tmp / "photos"
    origin = make_photos(folder, args.images)
    # The commands load the model without onnxruntime's busy-waiting (spin=False) so that
    # decoding gets the cores between runs; the model alone runs the same way and, for
    # reference, with spinning (the API's default).
    model = SceneCam.load(args.model, threads=args.threads, spin=False)
    spinning = SceneCam.load(args.model, threads=args.threads, spin=True)
    files = sorted(folder.iterdir())
    arrays = [model.to_input(model.load_image(p)) for p in files]
    names = [str(p) for p in files]
    bs = args.batch_size
    exe = str(Path(sys.executable).with_name("scenecam-edge"))
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    model_arg = [] if args.model is None else ["--model", args.model]

    def model_alone(candidate: SceneCam) -> float:
        start = time.perf_counter()
        for i in range(0, len(arrays), bs):
            candidate.predict(arrays[i : i + bs], names[i : i + bs])
        return len(arrays) / (time.perf_counter() - start)

    def engine(k: int) -> float:
        results = ResultsFile(tmp / f"engine{k}.jsonl", "jsonl", model.class_names)
        start = time.perf_counter()
        for _ in BatchJob(model, results, batch_size=bs).run(iter_sources([folder])):
            pass
        return len(arrays) / (time.perf_counter() - start)

    def command(k: int) -> tuple[float, float, float]:
        out = tmp / f"cli{k}.jsonl"
        wall, rss, err = child(
            [
                exe,
                "batch",
                str(folder),
                "--out",
                str(out),
                "--batch-size",
                str(bs),
                *threads,
                *model_arg,
            ]
        )
        return rate(err, "images"), len(arrays) / wall, rss

    try:
        import rasterio  # noqa: F401

        has_geo = True
    except ImportError:
        has_geo = False
    scene, small = tmp / "scene.tif", tmp / "small.tif"
    if has_geo:
        make_scene(scene, args.scene, arrays[:200])
        make_scene(small, 1500, arrays[:200])

    def tiles(k: int, *extra: str) -> tuple[float, float]:
        out = str(tmp / f"map{k}.tif")
        cmd = [
            exe,
            "tiles",
            str(scene),
            "--out",
            out,
            "--batch-size",
            str(bs),
            *threads,
            *model_arg,
            *extra,
        ]
        _, rss, err = child(cmd)
        return rate(err, "tiles"), rss

    model_alone(model)  # warm up the sessions' arenas
    model_alone(spinning)
    keys = ("model", "spinning", "engine", "cli", "cli_wall", "tiles")
    runs: dict[str, list[float]] = {k: [] for k in keys}
    batch_rss: list[float] = []
    tile_rss: list[float] = []
    for k in range(args.rounds):  # interleaved, so load from the rest of the machine is shared
        runs["model"].append(model_alone(model))
        runs["spinning"].append(model_alone(spinning))
        runs["engine"].append(engine(k))
        cli_rate, cli_wall, rss = command(k)
        runs["cli"].append(cli_rate)
        runs["cli_wall"].append(cli_wall)
        batch_rss.append(rss)
        if has_geo:
            tiles_rate, rss = tiles(k)
            runs["tiles"].append(tiles_rate)
            tile_rss.append(rss)
    med = {k: statistics.median(v) for k, v in runs.items() if v}

    def versus(value: float) -> str:
        return f"{value / med['model']:.2f}"

    rows = [
        ("model alone (predict on pre-decoded arrays)", f"{med['model']:.1f} img/s", "1.00"),
        (
            "model alone, onnxruntime spinning (the API default)",
            f"{med['spinning']:.1f} img/s",
            versus(med["spinning"]),
        ),
        (
            "batch engine, in process (BatchJob -> JSONL)",
            f"{med['engine']:.1f} img/s",
            versus(med["engine"]),
        ),
        (
            "`scenecam-edge batch` (its summary: model load excluded)",
            f"{med['cli']:.1f} img/s",
            versus(med["cli"]),
        ),
        (
            "`scenecam-edge batch` wall time, start-up included",
            f"{med['cli_wall']:.1f} img/s",
            versus(med["cli_wall"]),
        ),
        ("`scenecam-edge batch` peak RSS", f"{max(batch_rss):.0f} MB", ""),
    ]

    if has_geo:
        cam_rate, cam_rss = tiles(args.rounds, "--heatmaps")
        _, small_rss, _ = child(
            [exe, "tiles", str(small), "--out", str(tmp / "small-map.tif"), *threads, *model_arg]
        )
        grid = (args.scene // 150) ** 2
        tiles_rate = med["tiles"]
        rows += [
            (
                f"`scenecam-edge tiles` {args.scene} x {args.scene} px, {grid} tiles",
                f"{tiles_rate:.1f} tiles/s",
                f"{versus(tiles_rate)} (vs the batch command: {tiles_rate / med['cli']:.2f})",
            ),
            (
                "`scenecam-edge tiles` peak RSS",
                f"{max(tile_rss):.0f} MB ({small_rss:.0f} MB on a 1500 x 1500 px scene)",
                "target < 500 MB",
            ),
            (
                "`scenecam-edge tiles --heatmaps` (full-res CAM mosaic)",
                f"{cam_rate:.1f} tiles/s, peak RSS {cam_rss:.0f} MB",
                versus(cam_rate),
            ),
        ]

    print(
        f"\n{origin}, batch size {bs}, {args.rounds} interleaved rounds (medians); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"onnxruntime threads {args.threads or 'default'}\n"
    )
    print("| measure | speed | ratio to model alone |")
    print("|---|---|---|")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
