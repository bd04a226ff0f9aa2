"""Export a Keras functional model to a bundle the TensorFlow-free runtime can serve.

The graph is cut in two at the Grad-CAM layer: everything up to it goes into ONNX with two
outputs (``features`` and pre-softmax ``logits``), and the head after it is also written out
as plain layers and weights, which the runtime runs forward and backward in numpy. Gradient
graphs are never converted (tf2onnx has no handlers for ReluGrad and friends).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from scenecam_edge import SceneCam
from scenecam_edge._version import __version__
from scenecam_edge.bundle import FEATURES, LOGITS, MANIFEST, SCHEMA_VERSION, sha256_file
from scenecam_edge.fileio import folder_replaced_on_success

log = logging.getLogger(__name__)

OPSET = 17
HEAD_FILE = "head.npz"
#: Largest |softmax(onnx) - keras| accepted when the export checks itself.
PARITY_TOLERANCE = 1e-4

# Layers that may sit between the Grad-CAM layer and the output. Elementwise layers
# (activations, batch norm) on 4-D tensors belong to the trunk: the walk back stops there.
_HEAD_KINDS = (
    keras.layers.Dense,
    keras.layers.Flatten,
    keras.layers.Dropout,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.MaxPooling2D,
    keras.layers.Activation,
    keras.layers.Softmax,
    keras.layers.ReLU,
    keras.layers.BatchNormalization,
    keras.layers.Reshape,
)
_ELEMENTWISE = (keras.layers.Activation, keras.layers.ReLU, keras.layers.BatchNormalization)


class ExportError(ValueError):
    """The model cannot be exported; the message names the layer and the reason."""


@dataclass
class HeadSpec:
    """The head as the manifest describes it, plus its arrays for ``head.npz``."""

    conv_layer: keras.layers.Layer
    layers: list[keras.layers.Layer]
    specs: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    final_activation: str = "linear"


def export_keras(
    model: keras.Model | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    conv_layer: str | None = None,
    class_names: list[str] | None = None,
    *,
    name: str | None = None,
    description: str = "",
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle for ``model`` (a Keras model or a ``.keras`` path) into ``out_dir``.

    ``conv_layer`` names the Grad-CAM layer; by default it is the last 4-D layer feeding the
    head. The bundle is built in a temporary folder, checked (ONNX against Keras, and the
    runtime's load-time self-check), and only then moved into place.
    """
    if not isinstance(model, keras.Model):
        model = keras.models.load_model(model, compile=False)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty (pass overwrite=True / --force)")

    height, width, channels = _input_shape(model)
    head = split_head(model, conv_layer)
    num_classes = int(head.layers[-1].output.shape[-1]) if head.layers else 0
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ExportError(f"the model has {num_classes} outputs but {len(class_names)} class names")

    serve = _serving_function(model, head, height, width, channels)
    import tf2onnx  # imported here: slow, and only export needs it

    onnx_model, _ = tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=OPSET
    )
    features_shape = [None, *(int(d) for d in head.conv_layer.output.shape[1:])]

    with folder_replaced_on_success(out) as staging:
        (staging / "model.onnx").write_bytes(onnx_model.SerializeToString())
        np.savez(staging / HEAD_FILE, allow_pickle=False, **head.arrays)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name or out.name,
            "description": description,
            "class_names": list(class_names),
            "input": {
                "name": "image",
                "dtype": "uint8",
                "layout": "NHWC",
                "height": height,
                "width": width,
                "channels": channels,
            },
            "outputs": {
                FEATURES: {"dtype": "float32", "shape": features_shape},
                LOGITS: {"dtype": "float32", "shape": [None, num_classes]},
            },
            "conv_layer": head.conv_layer.name,
            "head": {
                "file": HEAD_FILE,
                "layers": head.specs,
                "final_activation": head.final_activation,
                "linear": all(
                    s["type"] != "relu" and s.get("activation", "linear") == "linear"
                    for s in head.specs
                ),
            },
            "files": {
                "model.onnx": sha256_file(staging / "model.onnx"),
                HEAD_FILE: sha256_file(staging / HEAD_FILE),
            },
            "producer": {
                "scenecam_edge": __version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "tf2onnx": tf2onnx.__version__,
                "onnx_opset": OPSET,
                "source_model": model.name,
            },
            "training": training,
            "evaluation": evaluation,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _check_parity(model, staging, height, width, channels)
    log.info("exported %s -> %s (Grad-CAM layer %s)", model.name, out, head.conv_layer.name)
    return out


def split_head(model: keras.Model, conv_layer: str | None = None) -> HeadSpec:
    """Find the Grad-CAM layer and describe the head after it as numpy-runnable layers."""
    if len(model.outputs) != 1:
        raise ExportError(f"model {model.name!r} must have one output, has {len(model.outputs)}")
    if conv_layer is not None:
        try:
            model.get_layer(conv_layer)
        except ValueError:
            raise ExportError(f"model has no layer named {conv_layer!r}") from None

    chain: list[keras.layers.Layer] = []
    layer = _producer(model.outputs[0])
    while True:
        if isinstance(layer, keras.layers.InputLayer):
            raise ExportError("walked back to the model input without finding a 4-D conv layer")
        if conv_layer is not None:
            if layer.name == conv_layer:
                break
        elif not _is_head_layer(layer):
            break
        chain.append(layer)
        inbound = layer.input
        if isinstance(inbound, list | tuple):
            raise ExportError(
                f"layer {layer.name!r} has several inputs: the layers after the Grad-CAM layer "
                f"{conv_layer or '(default)'!r} must be a chain of head layers"
            )
        layer = _producer(inbound)
    chain.reverse()
    if len(layer.output.shape) != 4:
        raise ExportError(
            f"Grad-CAM layer {layer.name!r} must output a 4-D (N, h, w, K) tensor, "
            f"not shape {tuple(layer.output.shape)}"
        )
    if not chain:
        raise ExportError(f"nothing follows {layer.name!r}: the model has no classifier head")
    head = HeadSpec(conv_layer=layer, layers=chain)
    for i, hl in enumerate(chain):
        _describe_layer(head, i, hl, last=i == len(chain) - 1)
    return head


def _describe_layer(head: HeadSpec, i: int, layer: keras.layers.Layer, last: bool) -> None:
    kind = type(layer).__name__
    where = f"head layer {layer.name!r} ({kind})"
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        if layer.keepdims or layer.data_format != "channels_last":
            raise ExportError(f"{where}: only keepdims=False, channels_last is supported")
        head.specs.append({"type": "global_average_pooling"})
    elif isinstance(layer, keras.layers.AveragePooling2D):
        if layer.padding != "valid" or layer.data_format != "channels_last":
            raise ExportError(f"{where}: only padding='valid', channels_last is supported")
        head.specs.append(
            {
                "type": "average_pooling",
                "pool_size": list(layer.pool_size),
                "strides": list(layer.strides),
            }
        )
    elif isinstance(layer, keras.layers.Flatten):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ExportError(f"{where}: only channels_last is supported")
        head.specs.append({"type": "flatten"})
    elif isinstance(layer, keras.layers.Dropout):
        head.specs.append({"type": "dropout"})
    elif isinstance(layer, keras.layers.Dense):
        activation = _activation_name(layer.activation)
        if activation == "softmax" and last:
            head.final_activation = "softmax"
            activation = "linear"
        if activation not in ("linear", "relu"):
            raise ExportError(f"{where}: activation {activation!r} is not supported in the head")
        kernel = np.asarray(layer.kernel.numpy(), dtype=np.float32)
        bias = (
            np.asarray(layer.bias.numpy(), dtype=np.float32)
            if layer.use_bias
            else np.zeros(kernel.shape[1], np.float32)
        )
        head.arrays[f"{i}.kernel"], head.arrays[f"{i}.bias"] = kernel, bias
        head.specs.append(
            {
                "type": "dense",
                "name": layer.name,
                "kernel": f"{i}.kernel",
                "bias": f"{i}.bias",
                "activation": activation,
            }
        )
    elif isinstance(layer, keras.layers.BatchNormalization):
        axis = layer.axis[0] if isinstance(layer.axis, list | tuple) else layer.axis
        if axis % len(layer.input.shape) != len(layer.input.shape) - 1:
            raise ExportError(f"{where}: only batch normalisation over the last axis is supported")
        gamma = np.asarray(layer.gamma.numpy(), np.float64) if layer.scale else 1.0
        beta = np.asarray(layer.beta.numpy(), np.float64) if layer.center else 0.0
        mean = np.asarray(layer.moving_mean.numpy(), np.float64)
        var = np.asarray(layer.moving_variance.numpy(), np.float64)
        scale = gamma / np.sqrt(var + layer.epsilon)
        offset = beta - mean * scale
        head.arrays[f"{i}.scale"] = np.broadcast_to(scale, mean.shape).astype(np.float32)
        head.arrays[f"{i}.offset"] = np.broadcast_to(offset, mean.shape).astype(np.float32)
        head.specs.append(
            {
                "type": "batch_normalization",
                "name": layer.name,
                "scale": f"{i}.scale",
                "offset": f"{i}.offset",
            }
        )
    elif isinstance(layer, keras.layers.ReLU) or (
        isinstance(layer, keras.layers.Activation) and _activation_name(layer.activation) == "relu"
    ):
        if isinstance(layer, keras.layers.ReLU) and (
            layer.max_value is not None
            or float(layer.negative_slope) != 0.0
            or float(layer.threshold) != 0.0
        ):
            raise ExportError(
                f"{where}: only a plain ReLU (no max value, slope or threshold) is supported"
            )
        head.specs.append({"type": "relu"})
    elif _is_softmax(layer) and last:
        head.final_activation = "softmax"
    elif isinstance(layer, keras.layers.Activation) and _activation_name(layer.activation) in (
        "linear",
    ):
        pass  # identity
    else:
        raise ExportError(
            f"{where} is not supported in the classifier head (supported: global or "
            "fixed-window average pooling, flatten, dropout, batch normalisation, relu, dense "
            "with a linear, relu or final softmax activation)"
        )


def _serving_function(
    model: keras.Model, head: HeadSpec, height: int, width: int, channels: int
) -> Any:
    trunk = keras.Model(model.inputs, head.conv_layer.output, name=f"{model.name}_trunk")
    input_dtype = model.inputs[0].dtype

    @tf.function(
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="image")]
    )
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        features = trunk(tf.cast(image, input_dtype), training=False)
        z = features
        for layer in head.layers:
            if head.final_activation == "softmax" and layer is head.layers[-1]:
                if isinstance(layer, keras.layers.Dense):  # the same Dense without its softmax
                    z = tf.matmul(tf.cast(z, tf.float32), tf.cast(layer.kernel, tf.float32))
                    if layer.use_bias:
                        z = z + tf.cast(layer.bias, tf.float32)
                continue  # a separate Softmax layer is dropped
            z = layer(z, training=False)
        return {FEATURES: tf.cast(features, tf.float32), LOGITS: tf.cast(z, tf.float32)}

    return serve


def _check_parity(model: keras.Model, bundle: Path, height: int, width: int, channels: int) -> None:
    """The bundle must agree with Keras and pass the runtime's own load-time checks."""
    loaded = SceneCam.load(bundle, threads=1)
    rng = np.random.default_rng(1234)
    images = rng.integers(0, 256, size=(4, height, width, channels), dtype=np.uint8)
    _, logits = loaded.forward(images)
    keras_out = np.asarray(model(images.astype(np.float32), training=False), dtype=np.float64)
    ours = logits.astype(np.float64)
    if _ends_in_softmax(model):
        ours = np.exp(ours - ours.max(axis=1, keepdims=True))
        ours /= ours.sum(axis=1, keepdims=True)
    diff = float(np.abs(ours - keras_out).max())
    if diff > PARITY_TOLERANCE * max(1.0, float(np.abs(keras_out).max())):
        raise ExportError(f"the ONNX graph disagrees with Keras by {diff:.2e}")


def _input_shape(model: keras.Model) -> tuple[int, int, int]:
    if len(model.inputs) != 1:
        raise ExportError(f"model must have one input, has {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]) or shape[3] < 1:
        raise ExportError(f"model input must be (None, H, W, C) with fixed sizes, not {shape}")
    return int(shape[1]), int(shape[2]), int(shape[3])


def _producer(tensor: Any) -> keras.layers.Layer:
    return tensor._keras_history.operation


def _activation_name(fn: Any) -> str:
    return getattr(fn, "__name__", str(fn))


def _is_softmax(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation)
        and _activation_name(layer.activation) == "softmax"
    )


def _ends_in_softmax(model: keras.Model) -> bool:
    last = _producer(model.outputs[0])
    if isinstance(last, keras.layers.Dense):
        return _activation_name(last.activation) == "softmax"
    return _is_softmax(last)


def _is_head_layer(layer: keras.layers.Layer) -> bool:
    if not isinstance(layer, _HEAD_KINDS):
        return False
    # An activation or batch norm on a 4-D tensor is part of the trunk (e.g. the ReLU after
    # a ResNet's last add): the walk stops there and that layer is the Grad-CAM layer.
    return not (isinstance(layer, _ELEMENTWISE) and len(layer.input.shape) == 4)
