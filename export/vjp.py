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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
import tensorflow as tf

from scenecam_edge.head import VJP_INPUTS, VJP_OUTPUTS

from .errors import ExportError
from .grad_ops import HANDLERS
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
        with quiet_converter():
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


@contextmanager
def quiet_converter() -> Iterator[None]:
    """tf2onnx's own log lines off during a conversion, unless this package logs at INFO
    (``-v``): an operator it cannot convert is an ERROR line per node, and the export then
    fails with one line of its own naming the first (a failed export prints one line)."""
    logger = logging.getLogger("tf2onnx")
    if log.getEffectiveLevel() <= logging.INFO:
        yield
        return
    saved = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(saved)


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
