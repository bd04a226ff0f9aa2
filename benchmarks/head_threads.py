"""A nonlinear head's gradient with the head's einsum products against numpy's ``@`` (BLAS and
its thread pool), on the shipped MNIST bundle (Flatten 7744 -> Dense 128 ReLU -> Dense 10).

    python benchmarks/head_threads.py [--rounds 200]

Runtime only. Median and 90th percentile of ``Head.vjp`` at batch 1, after a warm-up; the two
variants alternate in blocks. Run it beside other work (a camera loop, onnxruntime's threads)
to see the thread pools compete.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scenecam_edge import SceneCam, head_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    cam = SceneCam.load("mnist-tutorial", threads=2)
    image = np.random.default_rng(0).integers(0, 256, (1, 28, 28, 1), dtype=np.uint8)
    features, _ = cam.forward(image)
    cotangent = np.eye(10)[[3]]
    einsum = head_layers.matmul
    variants = {"einsum (the head's)": einsum, "numpy @ (BLAS threads)": lambda x, k: x @ k}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(4):
        for name, fn in variants.items():
            head_layers.matmul = fn  # type: ignore[assignment]
            for _ in range(10):
                cam.head.vjp(features, cotangent)
            for _ in range(args.rounds // 4):
                start = time.perf_counter()
                cam.head.vjp(features, cotangent)
                times[name].append((time.perf_counter() - start) * 1000)
    head_layers.matmul = einsum
    print("| products | median ms | p90 ms |\n|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {np.median(values):.2f} | {np.percentile(values, 90):.2f} |")


if __name__ == "__main__":
    main()
