"""Soak: kill a long `batch` at random moments, resume it each time, and check that the final
results file equals an uninterrupted run's, line for line.

    python benchmarks/soak.py                 # 10,000 generated images, 20 kills
    python benchmarks/soak.py --n 2000 --kills 20 --seed 1

Each kill is SIGKILL (two in three) or SIGTERM, sent once the file holds a randomly chosen
number of records, plus a random 0-30 ms (so some land inside a write). Every resumed run
must drop a torn line if there is one, skip what is recorded, and go on; the final file must
be byte-identical to the reference, line for line. Prints one summary line per run and a
verdict; exits 1 when the files differ.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from scenecam_edge.synthetic import wave_image


def make_images(folder: Path, n: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):  # one at a time: a soak writes more than fits in memory at once
        pixels = wave_image(rng, size)
        Image.fromarray(pixels).save(folder / f"img{i:05d}.png", compress_level=1)


def count_records(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return max(
                0, sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1
            )
    except FileNotFoundError:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="Images to generate.")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="Image side in pixels.")
    parser.add_argument("--model", default="scenes-mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    args = parser.parse_args()

    exe = shutil.which("scenecam-edge", path=os.path.dirname(sys.executable)) or "scenecam-edge"
    work = Path(tempfile.mkdtemp(prefix="scenecam-soak-"))
    rng = random.Random(args.seed)
    try:
        folder = work / "images"
        start = time.perf_counter()
        make_images(folder, args.n, args.size, args.seed)
        print(f"generated {args.n} images in {time.perf_counter() - start:.1f} s ({work})")

        def command(out: Path) -> list[str]:
            return [
                exe, "batch", str(folder), "--out", str(out), "--model", args.model,
                "--threads", "1", "--batch-size", str(args.batch_size),
            ]  # fmt: skip

        reference = work / "reference.jsonl"
        start = time.perf_counter()
        subprocess.run(command(reference), check=True, stderr=subprocess.DEVNULL)
        full = time.perf_counter() - start
        print(f"uninterrupted run: {count_records(reference)} records in {full:.1f} s")

        soaked = work / "soaked.jsonl"
        targets = sorted(rng.randrange(1, args.n) for _ in range(args.kills))
        kills = ended_first = 0
        for number, target in enumerate(targets, 1):
            proc = subprocess.Popen(command(soaked), stderr=subprocess.DEVNULL)
            while proc.poll() is None and count_records(soaked) < target:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))
            how = signal.SIGKILL if rng.random() < 2 / 3 else signal.SIGTERM
            if proc.poll() is None:
                proc.send_signal(how)
                kills += 1
            else:
                ended_first += 1
            proc.wait(timeout=120)
            print(
                f"run {number:2d}: {how.name} at >= {target} records -> exit {proc.returncode}, "
                f"{count_records(soaked)} records kept"
            )
        final = subprocess.run(command(soaked), stderr=subprocess.PIPE, text=True)
        print(f"final run: exit {final.returncode}; {final.stderr.strip().splitlines()[0]}")

        ours = soaked.read_bytes().splitlines(keepends=True)
        theirs = reference.read_bytes().splitlines(keepends=True)
        differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b]
        same = not differ and len(ours) == len(theirs)
        print(
            f"{kills} kills ({ended_first} runs ended before their moment); "
            f"{len(ours)} lines vs {len(theirs)} uninterrupted; "
            + ("IDENTICAL, line for line" if same else f"DIFFER at lines {differ[:5]}")
        )
        return 0 if same else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
