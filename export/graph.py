"""A Keras model as one flat list of steps, nested models inlined, and its evaluation in
TensorFlow.

Users build classifiers as a base model used as a layer (``Sequential([base, pooling,
Dense])``, or a functional model that calls ``base(x)``). Keras offers no tensor for a layer
inside the base from the outer model's input, so the export walks the graphs itself: every
operation becomes a :class:`Step` named by its path (``resnet50/conv5_block3_out``), and
:func:`evaluate` replays the steps on real tensors from any starting value. That one replay
gives the served graph (image to features and logits), the head after any layer, and the
vector-Jacobian graph for Grad-CAM at an earlier layer.

Two layers are replayed differently from their Keras call, so that they convert:

- ``Normalization``: its mean and variance become constants of the traced function (Keras
  keeps them as tensors the function captures, which tf2onnx turns into graph inputs).
- a grouped ``Conv2D`` (ConvNeXt's depthwise 7x7 and any ``groups > 1``): Keras runs it
  inside a ``tf.function(jit_compile=True)`` because TensorFlow's CPU kernels lack grouped
  convolution. Grappler never inlines a function marked for XLA, so the call reached the
  ONNX graph as a ``StatefulPartitionedCall`` node. Replayed as the plain convolution op,
  tf2onnx converts it to an ONNX ``Conv`` with ``group`` set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .errors import ExportError


@dataclass
class Step:
    """One operation of the flattened model."""

    path: str  # "base/conv5_block3_out"; nested models' names separated by "/"
    op: Any  # a keras Layer or Operation
    node: Any  # its Keras node, for the call's arguments
    arg_ids: dict[int, int]  # id(KerasTensor argument) -> value id
    outputs: list[int]  # value ids

    @property
    def inputs(self) -> list[int]:
        return list(dict.fromkeys(self.arg_ids.values()))


@dataclass
class Graph:
    steps: list[Step] = field(default_factory=list)
    shapes: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    producer: dict[int, Step] = field(default_factory=dict)
    input_id: int = 0
    output_id: int = 0
    input_dtype: str = "float32"

    def new_value(self, shape: tuple[Any, ...]) -> int:
        vid = len(self.shapes)
        self.shapes[vid] = tuple(shape)
        return vid

    def find(self, path: str) -> Step:
        """The step at ``path``, or the one step whose last path part is ``path``."""
        exact = [s for s in self.steps if s.path == path]
        if exact:
            return exact[-1]
        named = [s for s in self.steps if s.path.rsplit("/", 1)[-1] == path]
        if len(named) == 1:
            return named[0]
        if named:
            raise ExportError(
                f"layer {path!r} is ambiguous: {', '.join(s.path for s in named)} (give the path)"
            )
        raise ExportError(
            f"model has no layer named {path!r} (layers inside a nested model are named "
            "'outer/inner', e.g. 'resnet50/conv5_block3_out'; see `scenecam-edge export --help`)"
        )

    def spatial(self, vid: int) -> tuple[int, int] | None:
        """(h, w) of a 4-D value, else None."""
        shape = self.shapes[vid]
        if len(shape) != 4 or shape[1] is None or shape[2] is None:
            return None
        return int(shape[1]), int(shape[2])

    def ancestors(self, vid: int, stop: set[int]) -> set[int]:
        """Values ``vid`` is computed from, not looking past ``stop``."""
        seen: set[int] = set()
        todo = [vid]
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in stop or v not in self.producer:
                continue
            todo.extend(self.producer[v].inputs)
        return seen


def flatten(model: keras.Model) -> Graph:
    """The model's operations in an order that computes every input before its use."""
    graph = Graph()
    functional = _functional(model)
    if len(functional.inputs) != 1 or len(functional.outputs) != 1:
        raise ExportError(
            f"model {model.name!r} must have one input and one output, has "
            f"{len(functional.inputs)} and {len(functional.outputs)}"
        )
    graph.input_id = graph.new_value(functional.inputs[0].shape)
    graph.input_dtype = str(functional.inputs[0].dtype)
    (graph.output_id,) = _expand(functional, [graph.input_id], "", graph)
    return graph


def _functional(model: keras.Model) -> Any:
    if isinstance(model, keras.Sequential):
        if getattr(model, "_functional", None) is None:
            shape = getattr(model.layers[0], "input_shape", None) if model.layers else None
            if shape is None:
                raise ExportError(
                    f"Sequential model {model.name!r} has no known input shape "
                    "(start it with keras.Input)"
                )
            model.build(shape)
        return model._functional
    return model


def _expand(model: Any, in_ids: list[int], prefix: str, graph: Graph) -> list[int]:
    local: dict[int, int] = {id(t): v for t, v in zip(model.inputs, in_ids, strict=True)}

    def visit(tensor: Any) -> int:
        if id(tensor) in local:
            return local[id(tensor)]
        op, node_index, _ = tensor._keras_history
        node = op._inbound_nodes[node_index]
        arg_ids = {id(k): visit(k) for k in node.arguments.keras_tensors}
        path = prefix + op.name
        if isinstance(op, keras.Model):
            args = [arg_ids[id(k)] for k in node.arguments.keras_tensors]
            outs = _expand(_functional(op), args, path + "/", graph)
        else:
            outs = [graph.new_value(kt.shape) for kt in node.outputs]
            step = Step(path, op, node, arg_ids, outs)
            graph.steps.append(step)
            for vid in outs:
                graph.producer[vid] = step
        for kt, vid in zip(node.outputs, outs, strict=True):
            local[id(kt)] = vid
        return local[id(tensor)]

    return [visit(t) for t in model.outputs]


def evaluate(
    graph: Graph,
    feeds: dict[int, tf.Tensor],
    wanted: list[int],
    *,
    strip_softmax: int | None = None,
) -> list[tf.Tensor]:
    """Replay the steps needed for ``wanted`` from the values in ``feeds``.

    ``strip_softmax`` names a value whose producer's final softmax is left out (the logits).
    Raises :class:`ExportError` when ``wanted`` needs a value that ``feeds`` does not reach,
    as when a skip connection goes around the fed layer.
    """
    needed: set[int] = set()
    for vid in wanted:
        needed |= graph.ancestors(vid, set(feeds))
    missing = sorted(v for v in needed if v not in feeds and v not in graph.producer)
    if missing:
        raise ExportError("the layers after the chosen one also read values computed before it")
    values: dict[int, tf.Tensor] = dict(feeds)
    for step in graph.steps:
        if not any(v in needed and v not in values for v in step.outputs):
            continue
        args, kwargs = tf.nest.map_structure(
            _as_constant,
            step.node.arguments.fill_in({kid: values[vid] for kid, vid in step.arg_ids.items()}),
        )
        try:
            result = _call(step, args, kwargs, strip=strip_softmax in step.outputs)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"layer {step.path!r} cannot be traced ({first_line(exc)})") from None
        for vid, value in zip(step.outputs, tf.nest.flatten(result), strict=True):
            values[vid] = value
    return [values[v] for v in wanted]


def _as_constant(value: Any) -> Any:
    """An eager tensor stored in a Keras node (the mean a ``preprocess_input`` subtracts) as a
    constant of the traced function: captured as it is, tf2onnx would make it a graph input."""
    if (
        isinstance(value, tf.Tensor)
        and hasattr(value, "numpy")
        and not tf.is_symbolic_tensor(value)
    ):
        return tf.constant(value.numpy())
    return value


def _call(step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], strip: bool) -> Any:
    op = step.op
    if isinstance(op, keras.layers.Normalization):
        return _normalization(op, args[0])
    if isinstance(op, keras.layers.Conv2D) and op.groups > 1:
        return _grouped_conv(op, args[0])
    if strip:
        if isinstance(op, keras.layers.Dense):
            return _dense_linear(op, args[0])
        if is_softmax(op):
            return args[0]
    if isinstance(op, keras.layers.Layer):
        kwargs = {**kwargs, "training": False}
    return op(*args, **kwargs)


def _normalization(layer: Any, x: tf.Tensor) -> tf.Tensor:
    mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float32)
    variance = np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float32)
    std = np.maximum(np.sqrt(variance), keras.backend.epsilon()).astype(np.float32)
    x = tf.cast(x, tf.float32)
    if layer.invert:
        return x * tf.constant(std) + tf.constant(mean)
    return (x - tf.constant(mean)) / tf.constant(std)


def _grouped_conv(layer: Any, x: tf.Tensor) -> tf.Tensor:
    if layer.data_format != "channels_last":
        raise ExportError(f"layer {layer.name!r}: grouped convolution must be channels_last")
    y = tf.nn.convolution(
        x,
        tf.cast(layer.kernel, x.dtype),
        strides=list(layer.strides),
        padding=layer.padding.upper(),
        dilations=list(layer.dilation_rate),
    )
    if layer.use_bias:
        y = y + tf.cast(layer.bias, y.dtype)
    return layer.activation(y)


def _dense_linear(layer: Any, x: tf.Tensor) -> tf.Tensor:
    z = tf.matmul(tf.cast(x, tf.float32), tf.cast(layer.kernel, tf.float32))
    return z + tf.cast(layer.bias, tf.float32) if layer.use_bias else z


def activation_name(fn: Any) -> str:
    try:
        return str(keras.activations.serialize(fn))
    except Exception:  # a custom callable Keras cannot name
        return getattr(fn, "__name__", repr(fn))


def is_softmax(op: Any) -> bool:
    return isinstance(op, keras.layers.Softmax) or (
        isinstance(op, keras.layers.Activation) and activation_name(op.activation) == "softmax"
    )


def ends_in_softmax(graph: Graph) -> bool:
    """True when the model's output is a softmax (as its own layer or a Dense's activation)."""
    step = graph.producer.get(graph.output_id)
    if step is None:
        return False
    if isinstance(step.op, keras.layers.Dense):
        return activation_name(step.op.activation) == "softmax"
    return is_softmax(step.op)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
