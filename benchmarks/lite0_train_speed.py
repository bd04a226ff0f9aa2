"""EfficientNet-Lite0's train step in images per second, as `train --pretrained` runs its
stages ("top": blocks 8-15, the head convolution and the classifier; "all": every layer;
batch norm frozen in both), in float32 and bfloat16 mixed precision, XLA on and off.

    python benchmarks/lite0_train_speed.py PRECISION XLA    # e.g. float32 0, mixed_bfloat16 1

One variant per run (each compiles its own graphs): 3 timed steps of batch 64 after one
warm-up step, on random pixels (a step's cost does not depend on what the pixels show),
and the frozen backbone's forward pass (the head stage's feature caching) beside them.
"""

from __future__ import annotations

import sys
import time

import keras
import numpy as np
import tensorflow as tf

from scenecam_edge.training.finetune import set_trainable
from scenecam_edge.training.lite0 import TOP_PREFIXES, efficientnet_lite0, load_imagenet


def main() -> None:
    precision, xla = sys.argv[1], sys.argv[2] == "1"
    keras.mixed_precision.set_global_policy(precision)
    model, _ = efficientnet_lite0((150, 150), 3, 6)
    keras.mixed_precision.set_global_policy("float32")
    load_imagenet(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 150, 150, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 6, 64), 6)
    pooled = keras.Model(model.input, model.get_layer("gap").output)
    forward = tf.function(lambda a: pooled(a, training=False), jit_compile=xla)
    forward(x)
    start = time.perf_counter()
    for _ in range(3):
        forward(x)
    print(f"{precision} xla={xla} forward: {192 / (time.perf_counter() - start):.1f} images/s")
    for which in ("top", "all"):
        set_trainable(model, which, TOP_PREFIXES)
        model.compile(keras.optimizers.AdamW(1e-3), "categorical_crossentropy", jit_compile=xla)
        model.train_on_batch(x, y)
        start = time.perf_counter()
        for _ in range(3):
            model.train_on_batch(x, y)
        rate = 192 / (time.perf_counter() - start)
        print(f"{precision} xla={xla} train {which}: {rate:.1f} images/s")


if __name__ == "__main__":
    main()
