"""Weights of a VJP graph: stored once, and as int8 in an int8 bundle (onnx and numpy only,
so ``quantize`` can use it without TensorFlow)."""

from __future__ import annotations

import numpy as np
import onnx

#: Two weights closer than this (relative to the larger magnitude) are stored once.
SHARE_TOLERANCE = 1e-6


def share_weights(model: onnx.ModelProto) -> int:
    """Store each weight once: TensorFlow's gradient reads a convolution's kernel again for
    its ``ConvTranspose``, a second copy in the graph (the forward convolution's kernel with
    the batch norm folded in, the backward one folded separately: the two differ by an ulp).
    Initializers of one shape that agree within :data:`SHARE_TOLERANCE` become one; the
    check against GradientTape that follows covers the difference. Returns how many went."""
    from onnx import numpy_helper

    big = [t for t in model.graph.initializer if len(t.dims) >= 2]
    arrays = {t.name: numpy_helper.to_array(t) for t in big}
    keep: list[str] = []
    alias: dict[str, str] = {}
    for name, a in arrays.items():
        scale = max(float(np.abs(a).max()), 1e-30)
        twin = next(
            (
                k
                for k in keep
                if arrays[k].shape == a.shape
                and float(np.abs(arrays[k] - a).max()) <= SHARE_TOLERANCE * scale
            ),
            None,
        )
        if twin is None:
            keep.append(name)
        else:
            alias[name] = twin
    if not alias:
        return 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    kept = [t for t in model.graph.initializer if t.name not in alias]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return len(alias)


def quantize_weights(model: onnx.ModelProto, min_elements: int = 4096) -> int:
    """Store the graph's large weights as int8 (symmetric, one scale per output channel,
    axis 0) behind ``DequantizeLinear``: the VJP graph of an int8 bundle then carries int8
    weights, as its model does, at a quarter of the float size. Returns the bytes saved."""
    from onnx import helper, numpy_helper

    saved = 0
    kept: list[onnx.TensorProto] = []
    added: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for tensor in model.graph.initializer:
        a = numpy_helper.to_array(tensor)
        if a.dtype != np.float32 or a.ndim < 2 or a.size < min_elements:
            kept.append(tensor)
            continue
        peak = np.abs(a.reshape(len(a), -1)).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        shape = (-1,) + (1,) * (a.ndim - 1)
        q = np.clip(np.rint(a / scale.reshape(shape)), -127, 127).astype(np.int8)
        base = tensor.name
        added += [
            numpy_helper.from_array(q, f"{base}_int8"),
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(np.zeros(len(a), np.int8), f"{base}_zero"),
        ]
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{base}_int8", f"{base}_scale", f"{base}_zero"],
                [base],
                name=f"dequantize_{base}",
                axis=0,
            )
        )
        saved += a.nbytes - q.nbytes
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)
    existing = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + existing)
    return saved
