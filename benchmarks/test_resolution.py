"""Train-test resolution (FixRes, Touvron et al. 2019) without retraining: the shipped
ResNet-18's accuracy on the validation split when it sees the photos at other sizes.

    python benchmarks/test_resolution.py                      # needs the train extra
    python benchmarks/test_resolution.py --sizes 150,165,180 --model models/scenes-resnet18

Training zooms in (RandomZoom up to 20%), so objects look larger in training than in a
150 px photo at test time; FixRes's remedy is to test at a higher resolution. The network is
convolutional up to a global average pool, so the same weights run at any size: the model is
rebuilt at each size with the bundle's weights (``export.recover``), and each photo is
decoded and resized to that size by the runtime's own loader, from the original file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from scenecam_edge.dataset import load_dataset, stratified_split
from scenecam_edge.export.recover import load_onnx_weights, onnx_initializers
from scenecam_edge.training.architectures import build

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "intel-scenes" / "train"
CACHE = Path.home() / ".cache" / "scenecam-edge"


def accuracy_at(
    size: int, weights: dict[str, np.ndarray], data: Path, arch: str
) -> tuple[float, int, float]:
    images = load_dataset(data, (size, size), cache_dir=CACHE)
    _, val = stratified_split(images.labels, 0.15, 1337)
    model, _ = build(arch, (size, size), 3, len(images.class_names))
    load_onnx_weights(model, weights)
    start = time.perf_counter()
    probabilities = model.predict(images.images[val].astype(np.float32), batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
    right = int((probabilities.argmax(axis=1) == images.labels[val]).sum())
    return right / len(val), len(val), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "scenes-resnet18")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sizes", default="150,160,170,180,192")
    args = parser.parse_args()
    weights = onnx_initializers(args.model / "model.onnx")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{args.model.name} on the validation split (15%, seed 1337), Keras float32\n")
    print("| test size | accuracy | photos | pixels vs 150 | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for size in sizes:
        accuracy, count, seconds = accuracy_at(size, weights, args.data, args.arch)
        print(
            f"| {size} | {accuracy:.2%} | {count} | {(size / 150) ** 2:.2f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
