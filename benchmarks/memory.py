"""Flat memory over a long batch: `scenecam-edge batch` on 10,000 images, RSS sampled.

    python benchmarks/memory.py [--images 10000]

Copies photos from ../shared/data/intel-scenes/train (cycling through them; generated
images when it is absent), runs the batch command as a child process, reads its resident
memory from /proc every 0.2 s, and prints the highest RSS seen up to each tenth of the run,
and the peak. The first tenth includes start-up (model load, first batches); flat means
the rows after it stay level.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "intel-scenes" / "train"


def make_photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    sources = sorted(DATA.rglob("*.jpg")) if DATA.is_dir() else []
    if not sources:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
        Image.fromarray(base).save(folder / "seed.jpg")
        sources = [folder / "seed.jpg"]
    for i in range(n):
        shutil.copy(sources[i % len(sources)], folder / f"{i:05d}.jpg")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def lines_in(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scenecam-memory-"))
    try:
        make_photos(tmp / "photos", args.images)
        out = tmp / "results.jsonl"
        exe = str(Path(sys.executable).with_name("scenecam-edge"))
        proc = subprocess.Popen(
            [exe, "batch", str(tmp / "photos"), "--out", str(out)], stderr=subprocess.DEVNULL
        )
        samples: list[tuple[float, int, float]] = []  # (seconds, lines done, RSS MB)
        start = time.perf_counter()
        while proc.poll() is None:
            rss = rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - start, lines_in(out), rss))
            time.sleep(0.2)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"batch failed with exit code {proc.returncode}")
        done = lines_in(out)
        print(
            f"{done} images in {time.perf_counter() - start:.1f} s; RSS of the batch process by progress:\n"
        )
        print("| images done | RSS MB |")
        print("|---:|---:|")
        tenths = []
        for k in range(1, 11):
            target = done * k / 10
            at = [rss for _, n, rss in samples if n <= target]
            tenths.append(max(at) if at else float("nan"))
            print(f"| {int(target)} | {tenths[-1]:.0f} |")
        peak = max(rss for _, _, rss in samples)
        errors = sum(1 for line in out.open() if '"error"' in line)
        print(
            f"\npeak {peak:.0f} MB; at 20% done {tenths[1]:.0f} MB, at the end {tenths[-1]:.0f} MB"
        )
        print(f"{errors} of {done} lines are errors")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
