"""The head as a second ONNX graph: (features, cotangent) -> (logits, gradient).

For Grad-CAM at a layer followed by convolutions, residual adds or anything else numpy does
not differentiate in closed form, the gradient comes from TensorFlow's own autodiff, traced
once at export and converted like the forward graph. Two things stand between a
``GradientTape`` graph and ONNX, and both are dealt with here:

- Shape bookkeeping (``BroadcastGradientArgs``, ``ShapeN``, ``DynamicStitch``) that
  TensorFlow emits for an unknown batch size: the graph is traced for one image, so the
  shapes are static and Grappler folds most of it away. The runtime runs it per image.
- The gradient kernels of elementwise ops (``ReluGrad``, ``Relu6Grad``, ``SigmoidGrad``, ...)
  that tf2onnx has no handler for: :data:`HANDLERS` writes each one as the forward ONNX
  operators it stands for (``ReluGrad(dy, x)`` is ``Where(x > 0, dy, 0)``). Convolution
  gradients are already handled by tf2onnx (``Conv2DBackpropInput`` is ``ConvTranspose``).

Why not hand-write backward rules over the ONNX forward graph: that is a reverse-mode
autodiff of ONNX, one rule per operator, and every rule a new place for an error. TensorFlow's
gradients are the reference the tests compare with anyway; converting them keeps the graph
exactly the reference's arithmetic. An operator without a handler stops the export with its
name, and the graph is checked against ``GradientTape`` before it is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import tensorflow as tf

from scenecam_edge.head import VJP_INPUTS, VJP_OUTPUTS

from .errors import ExportError
from .graph import Graph, evaluate
from .head_spec import HeadPlan
from .onnx_weights import share_weights

log = logging.getLogger(__name__)

#: Largest |onnx - tape| gradient difference, relative to the gradient's largest magnitude.
VJP_TOLERANCE = 1e-4


def build_vjp_graph(
    graph: Graph, plan: HeadPlan, num_classes: int, strip: bool, opset: int
) -> bytes:
    """The serialised VJP graph, checked against GradientTape on random inputs."""
    import tf2onnx

    shape = [1, *(int(d) for d in graph.shapes[plan.features_id][1:])]
    features_name, cotangent_name = VJP_INPUTS
    logits_name, gradient_name = VJP_OUTPUTS

    @tf.function(
        autograph=False,
        input_signature=[
            tf.TensorSpec(shape, tf.float32, name=features_name),
            tf.TensorSpec([1, num_classes], tf.float32, name=cotangent_name),
        ],
    )
    def vjp(features: tf.Tensor, cotangent: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(features)
            (z,) = evaluate(
                graph,
                {plan.features_id: features},
                [graph.output_id],
                strip_softmax=graph.output_id if strip else None,
            )
            z = tf.cast(z, tf.float32)
            score = tf.reduce_sum(z * cotangent)
        return {logits_name: z, gradient_name: tf.cast(tape.gradient(score, features), tf.float32)}

    try:
        model, _ = tf2onnx.convert.from_function(
            vjp,
            input_signature=vjp.input_signature,
            opset=opset,
            custom_op_handlers={name: (fn, []) for name, fn in HANDLERS.items()},
        )
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"the gradient graph after {plan.features_path!r} cannot be converted "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        ) from None
    unknown = sorted(
        {n.op_type for n in model.graph.node if n.domain == "" and not onnx.defs.has(n.op_type)}
    )
    if unknown:
        node = next(n for n in model.graph.node if n.op_type == unknown[0])
        raise ExportError(
            f"the gradient after {plan.features_path!r} needs TensorFlow op {unknown[0]} "
            f"(at {node.name}), which has no ONNX form here; choose a layer nearer the head"
        )
    shared = share_weights(model)
    if shared:
        log.info("VJP graph after %r: %d weights shared", plan.features_path, shared)
    data: bytes = model.SerializeToString()
    _check(data, vjp, shape, num_classes, plan.features_path)
    return data


def _check(data: bytes, vjp: Any, shape: list[int], num_classes: int, where: str) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    a = np.abs(rng.normal(size=shape)).astype(np.float32)
    v = rng.normal(size=(1, num_classes)).astype(np.float32)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    _z, g = session.run(list(VJP_OUTPUTS), {VJP_INPUTS[0]: a, VJP_INPUTS[1]: v})
    ref = vjp(tf.constant(a), tf.constant(v))
    ref_g = ref[VJP_OUTPUTS[1]].numpy()
    err = float(np.abs(g - ref_g).max()) / max(float(np.abs(ref_g).max()), 1e-12)
    if not err <= VJP_TOLERANCE:
        raise ExportError(
            f"the gradient graph after {where!r} disagrees with GradientTape by {err:.1e}"
        )


# -- tf2onnx handlers for TensorFlow's gradient kernels ---------------------------------------


def _zero_like(ctx: Any, x: str) -> str:
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
    return str(ctx.make_const(utils.make_name("zero"), np.zeros([], dtype)).output[0])


def _const(ctx: Any, x: str, value: float) -> str:
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
    return str(ctx.make_const(utils.make_name("c"), np.array(value, dtype)).output[0])


def _rewrite(ctx: Any, node: Any, op_type: str, inputs: list[str]) -> None:
    node.type = op_type
    for key in [k for k in node.attr if k != "T"]:  # TF attributes the ONNX op lacks
        del node.attr[key]
    ctx.replace_inputs(node, inputs)


def _relu_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    dy, x = node.input
    zero = _zero_like(ctx, x)
    positive = ctx.make_node("Greater", [x, zero]).output[0]
    _rewrite(ctx, node, "Where", [positive, dy, zero])


def _relu6_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    dy, x = node.input
    zero = _zero_like(ctx, x)
    above = ctx.make_node("Greater", [x, zero]).output[0]
    below = ctx.make_node("Less", [x, _const(ctx, x, 6.0)]).output[0]
    inside = ctx.make_node("And", [above, below]).output[0]
    _rewrite(ctx, node, "Where", [inside, dy, zero])


def _leaky_relu_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    dy, x = node.input
    alpha = float(node.get_attr_value("alpha"))
    scaled = ctx.make_node("Mul", [dy, _const(ctx, x, alpha)]).output[0]
    positive = ctx.make_node("Greater", [x, _zero_like(ctx, x)]).output[0]
    _rewrite(ctx, node, "Where", [positive, dy, scaled])


def _sigmoid_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    y, dy = node.input  # SigmoidGrad(y, dy) = dy * y * (1 - y)
    one_minus = ctx.make_node("Sub", [_const(ctx, y, 1.0), y]).output[0]
    slope = ctx.make_node("Mul", [y, one_minus]).output[0]
    _rewrite(ctx, node, "Mul", [dy, slope])


def _tanh_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    y, dy = node.input  # TanhGrad(y, dy) = dy * (1 - y^2)
    square = ctx.make_node("Mul", [y, y]).output[0]
    slope = ctx.make_node("Sub", [_const(ctx, y, 1.0), square]).output[0]
    _rewrite(ctx, node, "Mul", [dy, slope])


def _elu_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    dy, y = node.input  # EluGrad(dy, y) = dy if y > 0 else dy * (y + 1)
    below = ctx.make_node("Mul", [dy, ctx.make_node("Add", [y, _const(ctx, y, 1.0)]).output[0]])
    positive = ctx.make_node("Greater", [y, _zero_like(ctx, y)]).output[0]
    _rewrite(ctx, node, "Where", [positive, dy, below.output[0]])


def _erfc(ctx: Any, node: Any, name: str, args: Any) -> None:
    (x,) = node.input  # Keras's exact gelu uses erfc(x) = 1 - erf(x)
    erf = ctx.make_node("Erf", [x]).output[0]
    _rewrite(ctx, node, "Sub", [_const(ctx, x, 1.0), erf])


def _bias_add_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    (dy,) = node.input  # the bias's gradient: dy summed over every axis but the channels
    from tf2onnx import utils

    rank = ctx.get_rank(dy)
    axes = ctx.make_const(utils.make_name("axes"), np.arange(rank - 1, dtype=np.int64)).output[0]
    _rewrite(ctx, node, "ReduceSum", [dy, axes])
    node.set_attr("keepdims", 0)


def _shape_n(ctx: Any, node: Any, name: str, args: Any) -> None:
    from tf2onnx import utils

    inputs, outputs = list(node.input), list(node.output)
    ctx.remove_node(node.name)
    for inp, out in zip(inputs, outputs, strict=True):
        ctx.make_node("Shape", [inp], outputs=[out], name=utils.make_name("shape"))


HANDLERS: dict[str, Callable[..., None]] = {
    "ReluGrad": _relu_grad,
    "Relu6Grad": _relu6_grad,
    "LeakyReluGrad": _leaky_relu_grad,
    "SigmoidGrad": _sigmoid_grad,
    "TanhGrad": _tanh_grad,
    "EluGrad": _elu_grad,
    "ShapeN": _shape_n,
    "BiasAddGrad": _bias_add_grad,
    "Erfc": _erfc,
}
