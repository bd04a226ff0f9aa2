"""Flat functional Keras models. Each starts with its own input scaling, so the exported graph
takes raw uint8 pixels, and ends in a Dense softmax (stripped to logits at export).

Each builder returns (model, name of its Grad-CAM layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import layers


def _scaled_input(
    size: tuple[int, int], channels: int
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inp = keras.Input((*size, channels), name="image")
    return inp, layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inp)


def _conv_bn_relu(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    x = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _classifier(x: keras.KerasTensor, num_classes: int, dropout: float) -> keras.KerasTensor:
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    # The classifier stays float32 under mixed precision (stable softmax and loss).
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def small_cnn(size: tuple[int, int], channels: int, num_classes: int) -> tuple[keras.Model, str]:
    """A fast plain CNN (~0.1 GMAC at 150 px) for quick runs, tests and the first model."""
    inp, x = _scaled_input(size, channels)
    x = _conv_bn_relu(x, 24, 2, "stem")
    for i, (filters, stride) in enumerate([(48, 2), (96, 2), (96, 1), (192, 2), (192, 1)]):
        x = _conv_bn_relu(x, filters, stride, f"block{i + 1}")
    out = _classifier(x, num_classes, 0.2)
    return keras.Model(inp, out, name="small_cnn"), "block5_relu"


def _basic_block(x: keras.KerasTensor, filters: int, stride: int, name: str) -> keras.KerasTensor:
    shortcut = x
    y = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1"
    )(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_down")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_down_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet18(size: tuple[int, int], channels: int, num_classes: int) -> tuple[keras.Model, str]:
    """The standard ResNet-18: 7x7/2 stem, max pool, basic blocks 64-128-256-512, GAP + Dense."""
    inp, x = _scaled_input(size, channels)
    x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(x, filters, stride, f"stage{stage}_block{block + 1}")
    out = _classifier(x, num_classes, 0.0)
    return keras.Model(inp, out, name="resnet18"), "stage4_block2_out"


def _bottleneck(
    x: keras.KerasTensor, filters: tuple[int, int, int], stride: int, project: bool, name: str
) -> keras.KerasTensor:
    """1x1-3x3-1x1 with batch norm; ``project`` makes it the tutorial's convolutional block
    (a 1x1 conv on the shortcut), otherwise it is an identity block."""
    f1, f2, f3 = filters
    y = layers.Conv2D(f1, 1, strides=stride, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(f2, 3, padding="same", name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = layers.Conv2D(f3, 1, name=f"{name}_conv3")(y)
    y = layers.BatchNormalization(name=f"{name}_bn3")(y)
    shortcut = x
    if project:
        shortcut = layers.Conv2D(f3, 1, strides=stride, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def seed_resnet(size: tuple[int, int], channels: int, num_classes: int) -> tuple[keras.Model, str]:
    """A variant of the reference notebook's network (``notebook-resnet`` is the network as
    written): "same"-padded 7x7/2 stem and max pooling, then four stages of one convolutional
    block (strided 1x1 convolutions) and two identity blocks, then 2x2 average pooling,
    flatten and a Dense softmax; [-1, 1] input scaling and Keras's default initialisers."""
    inp, x = _scaled_input(size, channels)
    x = layers.Conv2D(64, 7, strides=2, padding="same", name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    stages = [(64, 64, 256), (128, 128, 512), (256, 256, 1024), (512, 512, 2048)]
    for s, filters in enumerate(stages, start=1):
        x = _bottleneck(x, filters, 2, True, f"stage{s}_conv")
        for b in (1, 2):
            x = _bottleneck(x, filters, 1, False, f"stage{s}_id{b}")
    conv_layer = x._keras_history.operation.name
    pool = min(2, int(x.shape[1]), int(x.shape[2]))
    x = layers.AveragePooling2D(pool, name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inp, out, name="seed_resnet"), conv_layer


def _glorot() -> keras.initializers.Initializer:
    """The notebook's kernel initialiser, as it wrote it: the same seed for every layer."""
    return keras.initializers.GlorotUniform(seed=0)


def _notebook_block(
    x: keras.KerasTensor, filters: tuple[int, int, int], downsample: bool, name: str
) -> keras.KerasTensor:
    """The notebook's bottleneck block. Its convolutional block (``downsample``) halves the
    resolution with a 1x1 convolution followed by ``MaxPool2D(2)`` on both paths; its
    identity block keeps the input as the shortcut."""
    f1, f2, f3 = filters
    y = layers.Conv2D(f1, 1, kernel_initializer=_glorot(), name=f"{name}_conv1")(x)
    if downsample:
        y = layers.MaxPooling2D(2, name=f"{name}_pool1")(y)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(f2, 3, padding="same", kernel_initializer=_glorot(), name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = layers.Conv2D(f3, 1, kernel_initializer=_glorot(), name=f"{name}_conv3")(y)
    y = layers.BatchNormalization(name=f"{name}_bn3")(y)
    shortcut = x
    if downsample:
        shortcut = layers.Conv2D(f3, 1, kernel_initializer=_glorot(), name=f"{name}_proj")(x)
        shortcut = layers.MaxPooling2D(2, name=f"{name}_proj_pool")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def notebook_resnet(
    size: tuple[int, int], channels: int, num_classes: int
) -> tuple[keras.Model, str]:
    """The reference scene notebook's network as it is written: ``ZeroPadding2D(3)``, a valid
    7x7/2 convolution, batch norm, ReLU and a valid 3x3/2 max pool; four stages of one
    convolutional block and two identity blocks (bottlenecks 64-64-256 ... 512-512-2048), the
    convolutional blocks downsampling with a 1x1 convolution and ``MaxPool2D(2)``; 2x2
    average pooling, flatten and a Dense softmax. Kernels start from
    ``glorot_uniform(seed=0)``; pixels are scaled to [0, 1] (the notebook's
    ``rescale=1/255``). It trains at 256 x 256 with Adam and plain cross-entropy."""
    inp = keras.Input((*size, channels), name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inp)
    x = layers.ZeroPadding2D(3, name="stem_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, kernel_initializer=_glorot(), name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    stages = [(64, 64, 256), (128, 128, 512), (256, 256, 1024), (512, 512, 2048)]
    for s, filters in enumerate(stages, start=1):
        x = _notebook_block(x, filters, True, f"stage{s}_conv")
        for b in (1, 2):
            x = _notebook_block(x, filters, False, f"stage{s}_id{b}")
    conv_layer = x._keras_history.operation.name
    pool = min(2, int(x.shape[1]), int(x.shape[2]))
    x = layers.AveragePooling2D(pool, name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=_glorot(),
        dtype="float32",
        name="predictions",
    )(x)
    return keras.Model(inp, out, name="notebook_resnet"), conv_layer


def mnist_tutorial(
    size: tuple[int, int], channels: int, num_classes: int
) -> tuple[keras.Model, str]:
    """The Grad-CAM-on-MNIST tutorial's network: two convolutions with max pooling between,
    then a nonlinear head (dropout, flatten, Dense 128 ReLU, dropout, Dense softmax)."""
    inp = keras.Input((*size, channels), name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inp)
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="last_conv_layer")(x)
    x = layers.Dropout(0.5, name="dropout1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(0.5, name="dropout2")(x)
    out = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inp, out, name="mnist_tutorial"), "last_conv_layer"


@dataclass(frozen=True)
class Recipe:
    """How an architecture is trained unless the command line says otherwise."""

    img_size: int = 150
    channels: int = 3
    optimizer: str = "adamw"  # "adamw", "nadam" or "adam"
    augment: bool = True  # flips, shear, zoom...: right for scenes, wrong for digits
    label_smoothing: float = 0.1
    # XLA and bfloat16 help ResNet-18's step on this project's CPUs; both slow EfficientNet's
    # depthwise convolutions (Lite0's top-block step: 49 images/s in float32 without XLA,
    # 15 with bfloat16, 4 with XLA: benchmarks/train_speed.py).
    xla: bool = True
    bf16: bool = True
    # Weights the architecture can start from (--pretrained), and the stages a pretrained
    # run goes through (name, epochs): see training/finetune.py.
    pretrained: tuple[str, ...] = ()
    # More layers the exported bundle explains on request (--layer): finer maps.
    extra_layers: tuple[str, ...] = ()


def _lite0(size: tuple[int, int], channels: int, num_classes: int) -> tuple[keras.Model, str]:
    from .lite0 import efficientnet_lite0

    return efficientnet_lite0(size, channels, num_classes)


Builder = Callable[[tuple[int, int], int, int], tuple[keras.Model, str]]

ARCHITECTURES: dict[str, tuple[Builder, Recipe]] = {
    "small": (small_cnn, Recipe()),
    "resnet18": (resnet18, Recipe()),
    "seed-resnet": (seed_resnet, Recipe()),
    "notebook-resnet": (
        notebook_resnet,
        Recipe(img_size=256, optimizer="adam", label_smoothing=0.0),
    ),
    "efficientnet-lite0": (
        _lite0,
        Recipe(xla=False, bf16=False, pretrained=("imagenet",), extra_layers=("block10_out",)),
    ),
    "mnist-tutorial": (
        mnist_tutorial,
        Recipe(img_size=28, channels=1, optimizer="nadam", augment=False, label_smoothing=0.0),
    ),
}


def recipe(arch: str) -> Recipe:
    return _lookup(arch)[1]


def _lookup(arch: str) -> tuple[Builder, Recipe]:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(
            f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}"
        ) from None


def build(
    arch: str, size: tuple[int, int], channels: int, num_classes: int
) -> tuple[keras.Model, str]:
    return _lookup(arch)[0](size, channels, num_classes)
