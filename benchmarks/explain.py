"""Explain time of exported bundles against a tf.function GradientTape Grad-CAM, and the cost
of a map at an earlier layer (a VJP graph head) against the head layer's map.

    python benchmarks/explain.py [--rounds 5] [--images 8] [--threads 2] [CASE ...]

Needs the train extra. Each case is exported twice: at its default Grad-CAM layer, and at an
earlier layer where one is named (then the bundle carries head.onnx). Per image at batch 1,
medians over rounds, all contenders interleaved in every round in this one process:
classify (onnxruntime), explain (onnxruntime + the numpy or graph head), and the keras-io
recipe's Grad-CAM as a tf.function with GradientTape (TensorFlow's own threads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scenecam_edge import SceneCam  # noqa: E402
from scenecam_edge.export import export_keras  # noqa: E402
from tests import keras_models as km  # noqa: E402

#: case -> (model builder, earlier layer or None, --preprocess)
CASES = {
    "small ResNet (32 px)": (lambda: km.gap_dense_model(5), "block_8_out", None),
    "MobileNetV3Small (64 px)": (km.ZOO["MobileNetV3Small"][0], None, None),
    "ResNet50 (64 px)": (
        km.ZOO["scaling outside the model"][0],
        "conv4_block6_out",
        "caffe",
    ),
    "VGG16 nested (32 px)": (km.ZOO["VGG16 nested in Sequential"][0], None, "caffe"),
}


def _time_ms(fn: Callable[[int], object], count: int, out: list[float]) -> None:
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    out.append((time.perf_counter() - start) * 1000 / count)


def _measure(
    cam: SceneCam, tape: km.TapeGradCam, images: np.ndarray, scaled: np.ndarray, rounds: int
) -> dict[str, float]:
    options = cam.explain_options()
    contenders: dict[str, Callable[[int], object]] = {
        "classify": lambda i: cam.predict([images[i]], ["x"]),
        "explain": lambda i: cam.predict([images[i]], ["x"], explain=options),
        "tape": lambda i: tape(scaled[i], 0, "logit"),
    }
    for fn in contenders.values():  # warm up (and trace the tf.function)
        fn(0)
    times: dict[str, list[float]] = {key: [] for key in contenders}
    for _ in range(rounds):
        for key, fn in contenders.items():
            _time_ms(fn, len(images), times[key])
    return {key: statistics.median(v) for key, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cases", nargs="*", default=list(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{args.images} images x {args.rounds} rounds, batch 1, median ms per image; "
        f"onnxruntime {args.threads} threads\n"
    )
    print("| model | map | classify | explain | tf.function tape Grad-CAM | tape / explain |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.cases:
        build, earlier, preprocess = CASES[name]
        model = build()
        with tempfile.TemporaryDirectory() as tmp:
            layers = [None] + ([earlier] if earlier else [])
            cams = {
                layer: SceneCam.load(
                    export_keras(
                        model, Path(tmp) / str(i), conv_layer=layer, preprocess=preprocess
                    ),
                    threads=args.threads,
                )
                for i, layer in enumerate(layers)
            }
            base = cams[None]
            h, w = base.input_size
            c = base.manifest.input.channels
            rng = np.random.default_rng(0)
            images = rng.integers(0, 256, size=(args.images, h, w, c), dtype=np.uint8)
            from scenecam_edge.export.preprocess import parse

            scaled = parse(preprocess).apply(images.astype(np.float32)).astype(np.float32)
            rows = {}
            for layer, cam in cams.items():
                tape = km.TapeGradCam(model, cam.manifest.conv_layer)
                ms = _measure(cam, tape, images, scaled, args.rounds)
                size = "x".join(str(d) for d in cam.manifest.features_shape[:2])
                kind = (
                    "graph head" if cam.manifest.head_layers[0]["type"] == "graph" else "numpy head"
                )
                rows[layer] = ms
                print(
                    f"| {name} | `{cam.manifest.conv_layer}` {size} ({kind}) | {ms['classify']:.2f} | "
                    f"{ms['explain']:.2f} | {ms['tape']:.2f} | {ms['tape'] / ms['explain']:.1f}x |",
                    flush=True,
                )
            if earlier:
                extra = rows[earlier]["explain"] - rows[earlier]["classify"]
                head = rows[None]["explain"] - rows[None]["classify"]
                print(
                    f"| {name}: earlier-layer map over head-layer map | | | "
                    f"+{extra:.2f} vs +{head:.2f} ms over classify | | |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
