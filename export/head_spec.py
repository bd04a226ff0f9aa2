"""Where Grad-CAM looks, and the head after it as layers the runtime runs in numpy.

The default layer: walking back from the logits through layers the runtime differentiates
in closed form (pooling, flatten, reshape, dropout, dense, 1x1 convolutions after global
pooling, normalisation, activations), the walk stops at the first layer that is not one of
them, or at an activation or normalisation whose output still has spatial extent (a ResNet's
last ReLU): that layer's output is what Grad-CAM explains. When that output is 1x1 (a
MobileNetV3 top at a small input), the default moves up to the last layer whose output is
larger than 1x1, and the head becomes a graph (:mod:`.vjp`).

A layer named with ``conv_layer`` gets a closed-form head when such a chain reaches it, and
a graph head otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from scenecam_edge.head_layers import ACTIVATIONS

from .errors import ExportError
from .graph import Graph, Step, activation_name, is_softmax

_POOLING = (
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.MaxPooling2D,
)
_ELEMENTWISE = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.Softmax,
)
_PASS = (keras.layers.Dropout, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dense)


@dataclass
class HeadPlan:
    """The explained value and what follows it: ``chain`` for a closed-form head, or
    ``None`` when the head must be a VJP graph."""

    features_id: int
    features_path: str
    chain: list[Step] | None
    specs: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    final_activation: str = "linear"


def plan_head(graph: Graph, conv_layer: str | None) -> HeadPlan:
    target = graph.find(conv_layer).outputs[0] if conv_layer else None
    chain: list[Step] = []
    vid = graph.output_id
    while vid != target and vid in graph.producer:
        step = graph.producer[vid]
        if len(step.inputs) != 1 or not _headable(graph, step, explicit=target is not None):
            break
        chain.append(step)
        vid = step.inputs[0]
    chain.reverse()
    if vid not in graph.producer and vid != target:
        raise ExportError("walked back to the model input without finding a layer to explain")
    closed: list[Step] | None = chain
    if target is not None and vid != target:
        vid, closed = target, None
    elif target is None and _extent(graph, vid) <= 1:
        vid, closed = _last_spatial(graph, vid), None
    plan = HeadPlan(vid, graph.producer[vid].path, closed)
    _check_extent(graph, plan)
    if closed is not None:
        if not closed:
            raise ExportError(f"nothing follows {plan.features_path!r}: the model has no head")
        try:
            for i, step in enumerate(closed):
                _describe(plan, i, step, last=i == len(closed) - 1)
        except ExportError:  # a layer numpy does not run: the exact VJP graph does instead
            plan.chain, plan.specs, plan.arrays = None, [], {}
            plan.final_activation = "linear"
    return plan


def _extent(graph: Graph, vid: int) -> int:
    hw = graph.spatial(vid)
    return 0 if hw is None else hw[0] * hw[1]


def _last_spatial(graph: Graph, vid: int) -> int:
    """The latest value ``vid`` depends on whose output is larger than 1x1."""
    ancestors = graph.ancestors(vid, set())
    for step in reversed(graph.steps):
        for out in step.outputs:
            if out in ancestors and _extent(graph, out) > 1:
                return out
    raise ExportError("no layer of the model has an output with spatial extent above 1x1")


def _check_extent(graph: Graph, plan: HeadPlan) -> None:
    shape = graph.shapes[plan.features_id]
    if len(shape) != 4:
        raise ExportError(
            f"Grad-CAM layer {plan.features_path!r} must output a 4-D (N, h, w, K) tensor, "
            f"not shape {shape}"
        )
    if _extent(graph, plan.features_id) <= 1:
        better = _last_spatial(graph, plan.features_id)
        raise ExportError(
            f"Grad-CAM layer {plan.features_path!r} outputs {shape[1]}x{shape[2]}: every map "
            f"would be uniform; choose a layer with spatial extent (--conv-layer "
            f"{graph.producer[better].path}, {graph.shapes[better][1]}x{graph.shapes[better][2]}) "
            "or a larger input size"
        )


def _headable(graph: Graph, step: Step, explicit: bool) -> bool:
    op = step.op
    spatial = _extent(graph, step.outputs[0]) > 1
    if isinstance(op, keras.layers.Conv2D):
        pointwise = (
            tuple(op.kernel_size) == (1, 1)
            and tuple(op.strides) == (1, 1)
            and tuple(op.dilation_rate) == (1, 1)
            and op.groups == 1
            and type(op) is keras.layers.Conv2D
        )
        return pointwise and (explicit or not spatial)
    if isinstance(op, _ELEMENTWISE):
        return explicit or not spatial
    return bool(isinstance(op, _PASS + _POOLING))


def _describe(plan: HeadPlan, i: int, step: Step, last: bool) -> None:
    layer = step.op
    where = f"head layer {step.path!r} ({type(layer).__name__})"
    spec = _spec(plan, i, layer, last, where)
    if spec is not None:
        plan.specs.append(spec)


def _spec(plan: HeadPlan, i: int, layer: Any, last: bool, where: str) -> dict[str, Any] | None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ExportError(f"{where}: only channels_last is supported")
    if isinstance(layer, keras.layers.GlobalAveragePooling2D | keras.layers.GlobalMaxPooling2D):
        kind = "average" if isinstance(layer, keras.layers.GlobalAveragePooling2D) else "max"
        return {"type": f"global_{kind}_pooling", "keepdims": bool(layer.keepdims)}
    if isinstance(layer, keras.layers.AveragePooling2D | keras.layers.MaxPooling2D):
        kind = "average" if isinstance(layer, keras.layers.AveragePooling2D) else "max"
        return {
            "type": f"{kind}_pooling",
            "pool_size": list(layer.pool_size),
            "strides": list(layer.strides),
            "padding": layer.padding,
        }
    if isinstance(layer, keras.layers.Flatten):
        return {"type": "flatten"}
    if isinstance(layer, keras.layers.Reshape):
        return {"type": "reshape", "shape": [int(d) for d in layer.target_shape]}
    if isinstance(layer, keras.layers.Dropout):
        return {"type": "dropout"}
    if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D):
        activation = activation_name(layer.activation)
        if activation == "softmax" and last:
            plan.final_activation, activation = "softmax", "linear"
        _check_activation(activation, where)
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float32)
        kernel = kernel.reshape(-1, kernel.shape[-1])  # a 1x1 conv's (1, 1, K, C) -> (K, C)
        bias = (
            np.asarray(keras.ops.convert_to_numpy(layer.bias), np.float32)
            if layer.use_bias
            else np.zeros(kernel.shape[1], np.float32)
        )
        plan.arrays[f"{i}.kernel"], plan.arrays[f"{i}.bias"] = kernel, bias
        spec = {"type": "dense", "name": layer.name, "kernel": f"{i}.kernel", "bias": f"{i}.bias"}
        return {**spec, "activation": activation}
    if isinstance(layer, keras.layers.BatchNormalization):
        _last_axis(layer.axis, len(layer.input.shape), where)
        gamma = _weight(layer.gamma) if layer.scale else 1.0
        beta = _weight(layer.beta) if layer.center else 0.0
        mean, var = _weight(layer.moving_mean), _weight(layer.moving_variance)
        scale = gamma / np.sqrt(var + layer.epsilon)
        plan.arrays[f"{i}.scale"] = np.broadcast_to(scale, mean.shape).astype(np.float32)
        plan.arrays[f"{i}.offset"] = np.broadcast_to(beta - mean * scale, mean.shape).astype(
            np.float32
        )
        return {"type": "batch_normalization", "scale": f"{i}.scale", "offset": f"{i}.offset"}
    if isinstance(layer, keras.layers.LayerNormalization):
        _last_axis(layer.axis, len(layer.input.shape), where)
        if getattr(layer, "rms_scaling", False):
            raise ExportError(f"{where}: rms_scaling is not supported")
        size = int(layer.input.shape[-1])
        plan.arrays[f"{i}.gamma"] = (
            _weight(layer.gamma).astype(np.float32) if layer.scale else np.ones(size, np.float32)
        )
        plan.arrays[f"{i}.beta"] = (
            _weight(layer.beta).astype(np.float32) if layer.center else np.zeros(size, np.float32)
        )
        return {
            "type": "layer_normalization",
            "gamma": f"{i}.gamma",
            "beta": f"{i}.beta",
            "epsilon": float(layer.epsilon),
        }
    if isinstance(layer, keras.layers.ReLU):
        return {
            "type": "activation",
            "function": "relu",
            "max_value": None if layer.max_value is None else float(layer.max_value),
            "negative_slope": float(layer.negative_slope),
            "threshold": float(layer.threshold),
        }
    if isinstance(layer, keras.layers.LeakyReLU):
        return {
            "type": "activation",
            "function": "leaky_relu",
            "negative_slope": float(layer.negative_slope),
        }
    if is_softmax(layer):
        if isinstance(layer, keras.layers.Softmax):
            _last_axis(layer.axis, len(layer.input.shape), where)
        if last:
            plan.final_activation = "softmax"
            return None
        return {"type": "activation", "function": "softmax"}
    if isinstance(layer, keras.layers.Activation):
        name = activation_name(layer.activation)
        _check_activation(name, where)
        return None if name == "linear" else {"type": "activation", "function": name}
    raise ExportError(f"{where} is not supported in the classifier head")


def _check_activation(name: str, where: str) -> None:
    if name not in ACTIVATIONS:
        raise ExportError(
            f"{where}: activation {name!r} is not supported in the head "
            f"(supported: {', '.join(ACTIVATIONS)}); choose an earlier --conv-layer"
        )


def _last_axis(axis: Any, rank: int, where: str) -> None:
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    if len(axes) != 1 or axes[0] % rank != rank - 1:
        raise ExportError(f"{where}: only normalisation over the last axis is supported")


def _weight(variable: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)
