"""Training throughput: images per second of ResNet-18's train step, XLA on and off, batch
sizes, input sizes, and what the input pipeline (augmentation, mixup) costs on its own.

    python benchmarks/train_speed.py                 # needs the train extra and ../shared/data
    python benchmarks/train_speed.py --steps 6 --rounds 2

Each variant is a model compiled as training compiles it (AdamW, bfloat16 mixed precision
where the CPU has it, the moving average of --ema), fed the same real photos. The variants
take turns, ``--steps`` steps each per round, so the machine's load falls on all of them
alike: read the ratios to the first row, not the seconds. The first steps of each variant
(tracing, XLA compilation) are run before timing and reported apart.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from scenecam_edge.dataset import LabelledImages, load_dataset
from scenecam_edge.training.architectures import build
from scenecam_edge.training.pipeline import dataset as _dataset
from scenecam_edge.training.train import EMA_MOMENTUM, TrainConfig, cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "intel-scenes" / "train"
CACHE = Path.home() / ".cache" / "scenecam-edge"


@dataclass(frozen=True)
class Variant:
    label: str
    size: int = 150
    batch: int = 64
    jit: bool | str = "auto"  # Keras's default: what `scenecam-edge train` uses


VARIANTS = [
    Variant("train's default: 150 px, batch 64, jit_compile='auto'"),
    Variant("XLA off (jit_compile=False)", jit=False),
    Variant("XLA on (jit_compile=True)", jit=True),
    Variant("batch 32", batch=32),
    Variant("batch 128", batch=128),
    Variant("112 px (a FixRes first stage)", size=112),
]


def compiled(variant: Variant, classes: int) -> keras.Model:
    policy = "mixed_bfloat16" if cpu_has_bf16() else "float32"
    keras.mixed_precision.set_global_policy(policy)
    try:
        model, _ = build("resnet18", (variant.size, variant.size), 3, classes)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    optimizer = keras.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=EMA_MOMENTUM)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy"],
        jit_compile=variant.jit,
    )
    return model


def pipeline_rate(data: LabelledImages, batch: int, batches: int) -> float:
    """Images per second out of training's tf.data pipeline alone (augment + mixup)."""
    cfg = TrainConfig(data="", out="", batch_size=batch, augment=True, mixup=0.2)
    stream = iter(_dataset(data, cfg, training=True).repeat())
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per variant per round.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--photos", type=int, default=512, help="Photos to feed (real, decoded).")
    args = parser.parse_args()

    sizes = sorted({v.size for v in VARIANTS})
    photos = {}
    for size in sizes:
        data = load_dataset(args.data, (size, size), cache_dir=CACHE)
        photos[size] = data.subset(np.random.default_rng(0).permutation(len(data))[: args.photos])
    classes = len(data.class_names)

    models, batches, warmup = {}, {}, {}
    for variant in VARIANTS:
        some = photos[variant.size]
        xb = tf.constant(some.images[: variant.batch].astype(np.float32))
        yb = tf.one_hot(some.labels[: variant.batch], classes)
        model = compiled(variant, classes)
        start = time.perf_counter()
        model.train_on_batch(xb, yb)
        model.train_on_batch(xb, yb)
        warmup[variant] = time.perf_counter() - start
        models[variant], batches[variant] = model, (xb, yb)
        print(f"ready: {variant.label} (first two steps {warmup[variant]:.1f} s)", flush=True)

    seconds = dict.fromkeys(VARIANTS, 0.0)
    for _ in range(args.rounds):
        for variant in VARIANTS:
            xb, yb = batches[variant]
            start = time.perf_counter()
            for _ in range(args.steps):
                models[variant].train_on_batch(xb, yb)
            seconds[variant] += time.perf_counter() - start

    jit_auto = models[VARIANTS[0]].jit_compile
    rates = {
        v: args.rounds * args.steps * v.batch / seconds[v] for v in VARIANTS
    }  # images per second
    base = rates[VARIANTS[0]]
    print(f"\njit_compile='auto' resolved to {jit_auto} on this machine\n")
    print("| variant | images/s | vs the default | first two steps |")
    print("|---|---:|---:|---:|")
    for v in VARIANTS:
        print(f"| {v.label} | {rates[v]:.1f} | {rates[v] / base:.2f} | {warmup[v]:.1f} s |")
    for size in sizes:
        rate = pipeline_rate(photos[size], 64, max(4, args.steps))
        step = next(r for v, r in rates.items() if v.size == size and v.batch == 64)
        print(
            f"| input pipeline alone at {size} px, batch 64 (augment + mixup) | {rate:.1f} | "
            f"{rate / step:.1f}x the step's rate | |"
        )


if __name__ == "__main__":
    main()
