"""Grad-CAM speed: the runtime against TensorFlow on the same Keras model, side by side.

    python benchmarks/speed.py                      # the shipped default's architecture
    python benchmarks/speed.py --arch resnet18      # another architecture
    python benchmarks/speed.py --keras runs/x/best.keras

Measures, per image at batch 1 (medians of rounds):
  in this process, interleaved: runtime classify; runtime explain (Grad-CAM and the heatmap at
  image size, as `explain` returns them); the same plus reading `.overlay` (JET colours
  blended over the image, made on first read);
  each in a child process of its own, so that neither shares the cores with onnxruntime's
  threads: TensorFlow tf.function forward + GradientTape Grad-CAM; the tutorial style (eager
  Keras call per image, then GradientTape, as in keras-io's grad_cam.py).
Then cold start: `scenecam-edge classify one.jpg` against the same job done in TensorFlow,
each as a fresh process. Prints a Markdown table; needs the train extra. Weights do not change
the speed, so without --keras it builds the architecture with random weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import REPO, cold_starts, keras_classify_job, ratio, time_modes

DATA = REPO.parent / "shared" / "data" / "intel-scenes" / "train"

# TensorFlow's contenders run in child processes: "compiled" (tf.function) with TensorFlow's
# defaults, "eager" (the tutorial style) with TF_ENABLE_ONEDNN_OPTS=0, since eager conv
# gradients abort in this TensorFlow build's oneDNN kernels on these CPUs (see
# tests/keras_models.py). In one process with onnxruntime, whose threads spin after each run,
# TensorFlow measured up to 2x slower on 2 cores.
TF_CHILD = "SCENECAM_BENCH_TF_CHILD"


def images(n: int, size: int) -> list[np.ndarray]:
    from scenecam_edge.images import load_image, resize_to

    paths = sorted(DATA.rglob("*.jpg")) if DATA.is_dir() else []
    if paths:
        paths = paths[:: max(1, len(paths) // n)][:n]
        return [resize_to(load_image(p), size, size) for p in paths]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def every_image(
    fn: Callable[[np.ndarray], object], imgs: list[np.ndarray]
) -> tuple[Callable[[], object], int]:
    """A timing mode: ``fn`` on each image in turn, batch 1."""
    return (lambda: [fn(img) for img in imgs]), len(imgs)


def tf_functions(model, conv_layer: str):
    import tensorflow as tf

    sys.path.insert(0, str(REPO))
    from tests.keras_models import keras_io_gradcam  # the tests' GradientTape reference

    gradcam = keras_io_gradcam(model, conv_layer)
    compiled = tf.function(gradcam)

    def run_compiled(img: np.ndarray):
        return compiled(tf.convert_to_tensor(img[None], tf.float32))

    def run_eager(img: np.ndarray):  # keras-io recipe: eager model call + tape, per image
        return gradcam(tf.convert_to_tensor(img[None], tf.float32))

    return run_compiled, run_eager


def build_model(args):
    import keras

    from scenecam_edge.training.architectures import build

    if args.keras:
        model = keras.models.load_model(args.keras, compile=False)
        return model, args.conv_layer
    keras.utils.set_random_seed(0)
    return build(args.arch, (args.size, args.size), 3, 6)


def tf_child(args, style: str) -> None:
    model, conv = build_model(args)
    compiled, eager = tf_functions(model, conv)
    fn = compiled if style == "compiled" else eager
    imgs = images(args.images, args.size)
    print(time_modes({style: every_image(fn, imgs)}, args.rounds)[style])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", default=None, help="Architecture to build (default: the shipped default's)."
    )
    parser.add_argument(
        "--keras", default=None, help="A trained .keras model instead of random weights."
    )
    parser.add_argument("--conv-layer", default=None, help="With --keras: its Grad-CAM layer.")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.arch is None:
        from scenecam_edge import SceneCam

        args.arch = (SceneCam.load().manifest.training or {}).get("arch", "small")
    if os.environ.get(TF_CHILD):
        tf_child(args, os.environ[TF_CHILD])
        return

    from scenecam_edge import SceneCam
    from scenecam_edge.export import export_keras

    model, conv = build_model(args)
    tmp = Path(tempfile.mkdtemp(prefix="scenecam-bench-"))
    bundle = export_keras(
        model, tmp / "bundle", conv_layer=conv, class_names=[f"c{i}" for i in range(6)]
    )
    cam = SceneCam.load(bundle, threads=args.threads)
    options = cam.explain_options()
    imgs = images(args.images, args.size)

    def classify(img: np.ndarray):
        return cam.predict([img], ["x"])

    def explain(img: np.ndarray):
        return cam.predict([img], ["x"], explain=options)

    def explain_overlay(img: np.ndarray):
        return [e.overlay for e in cam.predict([img], ["x"], explain=options)]

    contenders = {
        "runtime classify": classify,
        "runtime explain (Grad-CAM)": explain,
        "runtime explain + overlay": explain_overlay,
    }
    ms = time_modes({k: every_image(fn, imgs) for k, fn in contenders.items()}, args.rounds)

    child = [
        sys.executable,
        __file__,
        "--arch",
        args.arch,
        "--size",
        str(args.size),
        "--images",
        str(args.images),
        "--rounds",
        str(args.rounds),
    ]
    if args.keras:
        child += ["--keras", args.keras, "--conv-layer", str(args.conv_layer)]
    for name, style, extra in (
        ("TF tf.function + GradientTape", "compiled", {}),
        ("tutorial style (eager Keras + GradientTape)", "eager", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    ):
        env = dict(os.environ, **{TF_CHILD: style, "TF_CPP_MIN_LOG_LEVEL": "3"}, **extra)
        out = subprocess.run(child, check=True, capture_output=True, text=True, env=env)
        ms[name] = float(out.stdout.strip().splitlines()[-1])

    # Cold start: a fresh process classifies one photo, each way, alternating.
    photo = tmp / "one.jpg"
    from PIL import Image

    Image.fromarray(imgs[0]).save(photo)
    keras_file = tmp / "model.keras"
    model.save(keras_file)
    exe = str(Path(sys.executable).with_name("scenecam-edge"))
    tf_job = keras_classify_job(keras_file, photo)
    env_tf = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    jobs = {
        "runtime": ([exe, "classify", str(photo), "--model", str(bundle)], None),
        "tensorflow": ([sys.executable, "-c", tf_job], env_tf),
    }
    cold = {k: v["seconds"] for k, v in cold_starts(jobs, 3, tmp / "cold.log").items()}

    base = ms["runtime explain (Grad-CAM)"]
    print(
        f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"Model: {args.arch} at {args.size}px ({'trained ' + args.keras if args.keras else 'random weights'}), {args.images} images x {args.rounds} rounds, batch 1\n"
    )
    print("| per image, batch 1 | ms | runtime explain is faster by |")
    print("|---|---:|---:|")
    for name, value in ms.items():
        faster = "" if name.startswith("runtime") else ratio(value, base)
        print(f"| {name} | {value:.2f} | {faster} |")
    print(f"\nGrad-CAM overhead (explain / classify): {base / ms['runtime classify']:.3f}")
    print(
        f"With the overlay read as well (explain + overlay / classify): {ms['runtime explain + overlay'] / ms['runtime classify']:.3f}"
    )
    print(
        f"Cold start, classify one photo in a fresh process: runtime {cold['runtime']:.2f} s, TensorFlow {cold['tensorflow']:.2f} s ({ratio(cold['tensorflow'], cold['runtime'])})"
    )


if __name__ == "__main__":
    main()
