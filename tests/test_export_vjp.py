"""Grad-CAM before depthwise and grouped convolutions: the VJP graph's transposed convolutions.

Small models (seconds each) whose layers after the explained one are the convolutions whose
input gradients the export writes as a grouped ``ConvTranspose`` (``export/grad_ops.py``):
depthwise with kernels 3, 4 and 5, strides 1 and 2, ``same`` over odd and even sizes (where
TensorFlow pads more at the bottom and right), ``valid`` with rows the window never reads,
``ZeroPadding2D`` before a ``valid`` one (MobileNet's way), a depth multiplier, a dilation,
a ``SeparableConv2D`` and a grouped ``Conv2D``. The EfficientNet-Lite pattern (150 px -> 75 -> 38 -> 19 -> 10 -> 5,
MBConv without squeeze-excite, ReLU6, 'same') is explained at its stride-16 stage (10x10)
beside its 5x5 default. Each is held to GradientTape on the Keras model (<= 1e-4); the
keras.applications families at three depths are in ``tests/test_export_zoo.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import HAS_TF

pytestmark = [
    pytest.mark.tf,
    pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow: pip install '.[train]'"),
]

TOLERANCE = 1e-4

if HAS_TF:
    import keras
    from keras import layers

    from scenecam_edge import SceneCam
    from scenecam_edge.export import export_keras

    from . import keras_models as km
    from .test_export_zoo import compare_with_tape


def _variants_model() -> keras.Model:
    """Every depthwise shape the transposed convolution must get right, after layer 'start'."""
    keras.utils.set_random_seed(11)
    inp = keras.Input((23, 23, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="start")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6")(x)  # 23 -> 12
    x = layers.DepthwiseConv2D(5, padding="same", depth_multiplier=2, activation="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, activation="relu6")(x)
    y = layers.ZeroPadding2D(((0, 1), (0, 1)))(x)  # MobileNet: 12 -> 13, then valid -> 6
    y = layers.DepthwiseConv2D(3, strides=2, padding="valid", activation="relu")(y)
    z = layers.DepthwiseConv2D(3, strides=2, padding="valid")(x)  # 12 -> 5, row 11 unread
    z = layers.Conv2D(16, 2, padding="valid", activation="relu")(z)  # 5 -> 4
    z = layers.ZeroPadding2D(1)(z)  # 4 -> 6
    x = layers.Add()([y, z])
    x = layers.SeparableConv2D(16, 3, padding="same", depth_multiplier=2, activation="elu")(x)
    x = layers.DepthwiseConv2D(4, strides=2, padding="same", activation="relu6")(x)  # 6 -> 3
    x = layers.Conv2D(16, 3, padding="same", groups=4, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(4, activation="softmax")(x))


def _mbconv(x, expand: int, out: int, kernel: int, stride: int, name: str):
    """EfficientNet-Lite's block: expand 1x1, depthwise, project 1x1, batch norms, ReLU6,
    'same' padding, a residual add when the shape allows; no squeeze-excite."""
    y = layers.Conv2D(expand, 1, use_bias=False)(x)
    y = layers.ReLU(6.0)(layers.BatchNormalization(epsilon=1e-3)(y))
    y = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False)(y)
    y = layers.ReLU(6.0, name=f"{name}_activation")(layers.BatchNormalization(epsilon=1e-3)(y))
    y = layers.Conv2D(out, 1, use_bias=False)(y)
    y = layers.BatchNormalization(epsilon=1e-3)(y)
    return layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and x.shape[-1] == out else y


def lite_pattern_model() -> keras.Model:
    """EfficientNet-Lite0's shapes at 150 px with few channels: 75, 38, 19, 10 (the stride-16
    stage, 'stage4_out'), 5 (the default Grad-CAM layer, 'top_activation')."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((150, 150, 3))
    x = layers.Rescaling(1 / 128, offset=-127 / 128)(inp)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)  # 75
    x = layers.ReLU(6.0)(layers.BatchNormalization(epsilon=1e-3)(x))
    x = _mbconv(x, 16, 8, 3, 2, "block2a")  # 38
    x = _mbconv(x, 16, 12, 5, 2, "block3a")  # 19
    x = _mbconv(x, 24, 12, 3, 2, "block4a")  # 10
    x = _mbconv(x, 24, 12, 5, 1, "block4b")
    x = layers.Activation("linear", name="stage4_out")(x)
    x = _mbconv(x, 24, 16, 5, 2, "block6a")  # 5
    x = _mbconv(x, 32, 16, 3, 1, "block6b")
    x = layers.Conv2D(32, 1, use_bias=False)(x)
    x = layers.ReLU(6.0, name="top_activation")(layers.BatchNormalization(epsilon=1e-3)(x))
    x = layers.GlobalAveragePooling2D()(x)
    return km.with_random_bn(keras.Model(inp, layers.Dense(6)(x)), 9)


def test_depthwise_variants_match_gradienttape(tmp_path: Path):
    model = _variants_model()
    bundle = export_keras(model, tmp_path / "b", conv_layer="start")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["head"]["layers"][0]["type"] == "graph"
    assert "linear" not in manifest["head"]  # no hand-kept flag: the runtime works it out
    worst = compare_with_tape(SceneCam.load(bundle, threads=1), model, "start", None)
    assert max(worst.values()) <= TOLERANCE, worst


def test_lite_pattern_stride16_stage_matches_gradienttape(tmp_path: Path):
    """The shapes the EfficientNet-Lite0 bundle will have: odd sizes halved by 'same'
    depthwise convolutions of 3 and 5, explained at 10x10 through the VJP graph (an extra
    layer) beside the 5x5 default in closed form, and at 19x19 inside a block."""
    model = lite_pattern_model()
    bundle = export_keras(
        model,
        tmp_path / "b",
        extra_layers=["stage4_out", "block3a_activation"],
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["conv_layer"] == "top_activation"
    assert manifest["outputs"]["features"]["shape"][1:3] == [5, 5]
    extras = {e["name"]: e for e in manifest["extra_layers"]}
    assert extras["stage4_out"]["shape"][1:3] == [10, 10]
    assert extras["block3a_activation"]["shape"][1:3] == [19, 19]
    assert {e["gradient"] for e in extras.values()} == {"vjp_graph"}
    cam = SceneCam.load(bundle, threads=1)
    for layer, path in [(None, "top_activation"), *((n, n) for n in extras)]:
        worst = compare_with_tape(cam, model, path, None, layer=layer)
        assert max(worst.values()) <= TOLERANCE, (path, worst)


def test_activation_and_layer_norm_gradients_match_gradienttape(tmp_path: Path):
    """selu, softplus and softsign (closed form in a head) and layer normalisation behind a
    convolution: their gradient kernels (SeluGrad, SoftplusGrad, SoftsignGrad, RsqrtGrad)
    had no tf2onnx handler."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((12, 12, 3))
    x = layers.Rescaling(1 / 255)(inp)
    x = layers.Conv2D(6, 3, padding="same", name="first")(x)
    for activation in ("selu", "softplus", "softsign"):
        x = layers.Conv2D(6, 3, padding="same", activation=activation)(x)
    x = layers.LayerNormalization(epsilon=1e-3)(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(3)(x))
    bundle = export_keras(model, tmp_path / "b", conv_layer="first")
    worst = compare_with_tape(SceneCam.load(bundle, threads=1), model, "first", None)
    assert max(worst.values()) <= TOLERANCE, worst


def test_failed_export_is_one_line_and_exit_3(tmp_path: Path):
    """A gradient kernel nothing converts (bilinear upsampling's): tf2onnx logs an ERROR line
    per node; the command prints one line naming the operator, and exits 3."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same", name="first")(inp)
    x = layers.UpSampling2D(interpolation="bilinear")(x)
    x = layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "up.keras"
    keras.Model(inp, layers.Dense(3)(x)).save(path)
    out = tmp_path / "bundle"
    args = ["export", str(path), "--out", str(out), "--conv-layer", "first", "--preprocess", "none"]
    done = subprocess.run(
        [sys.executable, "-c", "from scenecam_edge.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "ResizeBilinearGrad" in lines[0] and "'first'" in lines[0] and str(path) in lines[0]
    assert not out.exists()
