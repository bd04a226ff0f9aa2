"""tf2onnx handlers for the TensorFlow gradient kernels it has no converter for.

Each handler rewrites one TensorFlow node of a traced ``GradientTape`` graph as the ONNX
operators it stands for: ``ReluGrad(dy, x)`` is ``Where(x > 0, dy, 0)``, and a depthwise
convolution's input gradient is a grouped ``ConvTranspose``. :mod:`.vjp` passes
:data:`HANDLERS` to the conversion; every graph built with them is checked against
``GradientTape`` before it is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import ExportError


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


def _selu_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    dy, y = node.input  # SeluGrad(dy, y) = dy * scale if y > 0 else dy * (y + scale * alpha)
    scale, alpha = 1.0507009873554805, 1.6732632423543772
    below = ctx.make_node("Add", [y, _const(ctx, y, scale * alpha)]).output[0]
    slope = ctx.make_node(
        "Where",
        [ctx.make_node("Greater", [y, _zero_like(ctx, y)]).output[0], _const(ctx, y, scale), below],
    ).output[0]
    _rewrite(ctx, node, "Mul", [dy, slope])


def _softplus_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    dy, x = node.input  # SoftplusGrad(dy, x) = dy * sigmoid(x)
    _rewrite(ctx, node, "Mul", [dy, ctx.make_node("Sigmoid", [x]).output[0]])


def _softsign_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    dy, x = node.input  # SoftsignGrad(dy, x) = dy / (1 + |x|)^2
    one_plus = ctx.make_node("Add", [ctx.make_node("Abs", [x]).output[0], _const(ctx, x, 1.0)])
    square = ctx.make_node("Mul", [one_plus.output[0], one_plus.output[0]]).output[0]
    _rewrite(ctx, node, "Div", [dy, square])


def _rsqrt_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    y, dy = node.input  # RsqrtGrad(y, dy) = dy * -y^3 / 2 (layer norm's 1 / sqrt(var + eps))
    cube = ctx.make_node("Mul", [ctx.make_node("Mul", [y, y]).output[0], y]).output[0]
    slope = ctx.make_node("Mul", [cube, _const(ctx, y, -0.5)]).output[0]
    _rewrite(ctx, node, "Mul", [dy, slope])


def _sqrt_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    y, dy = node.input  # SqrtGrad(y, dy) = dy / (2 y)
    twice = ctx.make_node("Add", [y, y]).output[0]
    _rewrite(ctx, node, "Div", [dy, twice])


def _reciprocal_grad(ctx: Any, node: Any, name: str, args: Any) -> None:
    y, dy = node.input  # ReciprocalGrad(y, dy) = -dy * y^2
    slope = ctx.make_node("Mul", [ctx.make_node("Mul", [y, y]).output[0], _const(ctx, y, -1.0)])
    _rewrite(ctx, node, "Mul", [dy, slope.output[0]])


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


def _attr_ints(node: Any, name: str, default: Sequence[int]) -> list[int]:
    value = node.get_attr_value(name)
    return [int(v) for v in value] if value else list(default)


def _attr_str(node: Any, name: str, default: str) -> str:
    value = node.get_attr_value(name)
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def transposed_pads(
    size: int,
    out: int,
    kernel: int,
    stride: int,
    dilation: int,
    padding: str,
    explicit: tuple[int, int] = (0, 0),
) -> tuple[int, int, int]:
    """(pad at the start, pad at the end, output padding) of the ``ConvTranspose`` that is
    the input gradient of a TensorFlow convolution over ``size`` pixels giving ``out``.

    TensorFlow's ``SAME`` pads ``total // 2`` before and the rest after (more at the bottom
    and right when the total is odd, which a stride of 2 over an odd size gives); the
    transpose takes those pads off its full output ``stride * (out - 1) + span``. Pixels the
    forward convolution never read (``VALID``, or ``SAME`` whose window ends short of the
    edge) get a zero gradient: the output padding adds them at the end."""
    span = (kernel - 1) * dilation + 1
    full = stride * (out - 1) + span
    if padding == "SAME":
        total = max(full - size, 0)
        begin, end = total // 2, total - total // 2
    elif padding == "VALID":
        begin, end = 0, 0
    elif padding == "EXPLICIT":
        begin, end = explicit
    else:
        raise ExportError(f"a convolution's gradient has padding {padding!r}, which is not handled")
    extra = size + begin + end - full
    if not 0 <= extra < stride:
        raise ExportError(
            f"a convolution's gradient over {size} pixels ({padding}, kernel {kernel}, "
            f"stride {stride}) does not map onto a transposed convolution"
        )
    return begin, end, extra


def _conv_backprop_input(ctx: Any, node: Any, name: str, args: Any) -> None:
    """A 2-D convolution's input gradient, ``Conv2DBackpropInput(sizes, filter, dy)`` or
    ``DepthwiseConv2dNativeBackpropInput(sizes, filter, dy)``, as ONNX ``ConvTranspose``.

    tf2onnx converts the first only for plain convolutions: a grouped one (``Conv2D(groups=g)``,
    ConvNeXt's 7x7, whose filter has C/g input channels) came out without ``group``, one
    channel wide, and the second not at all. Here both are one grouped ``ConvTranspose``:
    the filter (kh, kw, C/g, O) becomes (O, C/g, kh, kw) with ``group`` = C / (C/g); a
    depthwise filter (kh, kw, C, M) is first (kh, kw, 1, C*M), channel ``c*M + m`` as
    TensorFlow orders the depthwise outputs (the forward ``Conv``'s weight: the VJP graph
    stores it once). The padding is TensorFlow's (:func:`transposed_pads`). The gradient
    arrives NHWC and ``ConvTranspose`` works NCHW: a transpose either side, which tf2onnx's
    optimiser cancels against its neighbours."""
    from tf2onnx import utils

    _sizes, kernel, dy = node.input
    what = "a depthwise" if node.type.startswith("Depthwise") else "a"
    if _attr_str(node, "data_format", "NHWC") != "NHWC":
        raise ExportError(f"{what} convolution's gradient is not NHWC")
    out_shape = ctx.get_shape(node.output[0])
    dy_shape = ctx.get_shape(dy)
    k_shape = ctx.get_shape(kernel)
    if (
        out_shape is None
        or dy_shape is None
        or k_shape is None
        or len(out_shape) != 4
        or any(d is None or d < 1 for d in [*out_shape[1:], *dy_shape[1:], *k_shape])
    ):
        raise ExportError(f"{what} convolution's gradient has shapes unknown at export")
    kh, kw = int(k_shape[0]), int(k_shape[1])
    channels = int(out_shape[3])
    if node.type.startswith("Depthwise"):
        per_group, outputs = 1, channels * int(k_shape[3])
        shape = ctx.make_const(
            utils.make_name("depthwise_shape"), np.array([kh, kw, 1, outputs], np.int64)
        ).output[0]
        kernel = ctx.make_node("Reshape", [kernel, shape]).output[0]
    else:
        per_group, outputs = int(k_shape[2]), int(k_shape[3])
    if channels % per_group:
        raise ExportError(f"{what} convolution's filter does not divide its {channels} channels")
    strides = _attr_ints(node, "strides", [1, 1, 1, 1])[1:3]
    dilations = _attr_ints(node, "dilations", [1, 1, 1, 1])[1:3]
    padding = _attr_str(node, "padding", "VALID")
    explicit = _attr_ints(node, "explicit_paddings", [0] * 8)
    pads = [
        transposed_pads(
            int(out_shape[1 + i]),
            int(dy_shape[1 + i]),
            (kh, kw)[i],
            strides[i],
            dilations[i],
            padding,
            (explicit[2 + 2 * i], explicit[3 + 2 * i]),
        )
        for i in range(2)
    ]
    weight = ctx.make_node("Transpose", [kernel], attr={"perm": [3, 2, 0, 1]}).output[0]
    nchw = ctx.make_node("Transpose", [dy], attr={"perm": [0, 3, 1, 2]}).output[0]
    grad = ctx.make_node(
        "ConvTranspose",
        [nchw, weight],
        attr={
            "group": channels // per_group,
            "kernel_shape": [kh, kw],
            "strides": strides,
            "dilations": dilations,
            "pads": [pads[0][0], pads[1][0], pads[0][1], pads[1][1]],
            "output_padding": [pads[0][2], pads[1][2]],
        },
        shapes=[[int(out_shape[0]), channels, int(out_shape[1]), int(out_shape[2])]],
        dtypes=[ctx.get_dtype(dy)],
    ).output[0]
    _rewrite(ctx, node, "Transpose", [grad])
    node.set_attr("perm", [0, 2, 3, 1])


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
    "SeluGrad": _selu_grad,
    "SoftplusGrad": _softplus_grad,
    "SoftsignGrad": _softsign_grad,
    "RsqrtGrad": _rsqrt_grad,
    "SqrtGrad": _sqrt_grad,
    "ReciprocalGrad": _reciprocal_grad,
    "InvGrad": _reciprocal_grad,
    "Conv2DBackpropInput": _conv_backprop_input,
    "DepthwiseConv2dNativeBackpropInput": _conv_backprop_input,
}
