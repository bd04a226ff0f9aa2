"""Writes the golden references that let the runtime-only test run check every gradient-based
CAM formula without TensorFlow: for a linear head (GAP + Dense) and a nonlinear one (the MNIST
tutorial's shape: Flatten, Dense ReLU, Dropout, Dense), the features of a few wave images,
Keras's logits, the exported head's layers and arrays, and GradientTape's normalised maps for
every gradient method, both target spaces, the predicted class and another one.

    python -m tests.golden.make_golden      # needs the train extra; rewrites tests/golden/*.npz
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from scenecam_edge.export import export_keras

from .. import keras_models as km
from ..conftest import wave_images

HERE = Path(__file__).parent
METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
SPACES = ("logit", "probability")
IMAGES = 4


CASES = {
    "linear": (lambda: km.gap_dense_model(num_classes=5), "block_16_out", 32, 3),
    # the tutorial's network, narrower so that its golden file stays small
    "nonlinear": (
        lambda: km.mnist_style_model(seed=5, filters=(8, 8), units=16),
        "last_conv_layer",
        28,
        1,
    ),
}


def write(name: str) -> Path:
    build, conv, size, channels = CASES[name]
    model = build()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_keras(model, Path(tmp) / "bundle", conv_layer=conv)
        manifest = json.loads((bundle / "manifest.json").read_text())
        with np.load(bundle / manifest["head"]["file"], allow_pickle=False) as npz:
            head_arrays = {f"head/{k}": npz[k] for k in npz.files}
    images = wave_images(IMAGES, size, channels, seed=21)
    features, maps, targets = [], {}, []
    for i, image in enumerate(images):
        predicted = int(np.argmax(model(image[None].astype(np.float32))[0]))
        pair = (predicted, (predicted + 1 + i) % int(model.outputs[0].shape[-1]))
        targets.append(pair)
        a, _ = km.tape_features_and_gradient(model, conv, image, pair[0], "logit")
        features.append(a.numpy())
        for space in SPACES:
            for method in METHODS:
                for which, target in enumerate(pair):
                    maps.setdefault(f"map/{space}/{method}/{which}", []).append(
                        km.tape_method(model, conv, image, target, space, method)
                    )
    keras_logits = np.asarray(km.keras_head(model, conv)(np.stack(features)), np.float64)
    out = HERE / f"{name}.npz"
    np.savez_compressed(
        out,
        features=np.stack(features).astype(np.float32),
        keras_logits=keras_logits.astype(np.float64),
        targets=np.array(targets, np.int64),
        head_layers=np.array(json.dumps(manifest["head"]["layers"])),
        **head_arrays,
        **{k: np.stack(v).astype(np.float32) for k, v in maps.items()},
    )
    return out


if __name__ == "__main__":
    for case in CASES:
        print(write(case))
