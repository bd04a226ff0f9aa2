"""Test-time flip: its gain and its cost on the validation split, with and without, per model.

    python benchmarks/tta.py                                   # the shipped scene models
    python benchmarks/tta.py --model models/scenes-resnet18 --data DIR

The split is training's (``--val-split 0.15 --seed 1337``); the images are decoded once at the
model's size. Both variants run each batch in turn (interleaved), so the machine's load falls
on both alike: read the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scenecam_edge import SceneCam
from scenecam_edge.dataset import batches, load_dataset, stratified_split

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "intel-scenes" / "train"


def measure(model: str, data: Path, batch: int) -> dict[str, float]:
    variants = {"plain": SceneCam.load(model), "flip": SceneCam.load(model, tta=True)}
    size = variants["plain"].input_size
    images = load_dataset(data, size, cache_dir=Path.home() / ".cache" / "scenecam-edge")
    _, val = stratified_split(images.labels, 0.15, 1337)
    x, y = images.images[val], images.labels[val]
    right = dict.fromkeys(variants, 0)
    seconds = dict.fromkeys(variants, 0.0)
    for part in batches(len(x), batch):
        for name, cam in variants.items():
            start = time.perf_counter()
            answers = cam.predict(list(x[part]), [""] * len(x[part]))
            seconds[name] += time.perf_counter() - start
            right[name] += sum(a.index == t for a, t in zip(answers, y[part], strict=True))
    return {
        "images": len(y),
        "plain": right["plain"] / len(y),
        "flip": right["flip"] / len(y),
        "cost": seconds["flip"] / seconds["plain"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", help="Model name or folder (repeatable; default: three)."
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    models = args.model or ["models/scenes-resnet18", "scenes-resnet18-int8", "scenes-mini"]
    print("| model | photos | accuracy | with flip | gain (points) | time with flip / without |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in models:
        r = measure(model, args.data, args.batch)
        print(
            f"| {model} | {r['images']} | {r['plain']:.2%} | {r['flip']:.2%} | "
            f"{100 * (r['flip'] - r['plain']):+.2f} | {r['cost']:.2f} |"
        )


if __name__ == "__main__":
    main()
