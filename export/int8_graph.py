"""Graph surgery for int8: which nodes stay float, and onnxruntime's static quantisation.

The trunk (every convolution up to the ``features`` output) is quantised in QDQ form. The
classifier head (the nodes after the Grad-CAM layer that make the ``logits``) and the layout
nodes that make the ``features`` output stay in float, so the graph's logits come from the
very (dequantised) features it returns, as the runtime's head computes them.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict, deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from scenecam_edge.bundle import FEATURES, LOGITS

from .quant_settings import CALIBRATION_METHODS, QUANT_TYPES, QuantizeError, QuantSettings

log = logging.getLogger(__name__)

# Nodes that only move data between the Grad-CAM layer's tensor and the ``features`` output.
_LAYOUT_OPS = ("Transpose", "Identity", "Reshape", "Cast")
_CALIBRATION_BATCH = 10


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay float: the head (from the Grad-CAM layer's tensor to
    ``logits``) and the layout nodes that turn that tensor into the ``features`` output."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    outputs = {o.name for o in graph.output}
    if not {FEATURES, LOGITS} <= outputs:
        raise QuantizeError(f"the graph's outputs must include '{FEATURES}' and '{LOGITS}'")
    for node in graph.node:
        if not node.name:
            raise QuantizeError(f"a {node.op_type} node has no name; cannot exclude it")

    layout: list[str] = []
    tensor = FEATURES
    while tensor in producer and producer[tensor].op_type in _LAYOUT_OPS:
        layout.append(producer[tensor].name)
        tensor = producer[tensor].input[0]
    if tensor not in producer:
        raise QuantizeError(f"'{FEATURES}' does not come from a layer of the graph")

    downstream: set[str] = set()
    queue = deque([tensor])
    while queue:
        for node in consumers[queue.popleft()]:
            if node.name not in downstream:
                downstream.add(node.name)
                queue.extend(node.output)
    upstream: set[str] = set()
    queue = deque([LOGITS])
    while queue:
        name = queue.popleft()
        node = producer.get(name)
        if node is not None and node.name not in upstream:
            upstream.add(node.name)
            queue.extend(node.input)
    head = downstream & upstream
    if not head:
        raise QuantizeError(f"no path from '{FEATURES}' to '{LOGITS}' in the graph")
    order = [n.name for n in graph.node]
    return [n for n in order if n in head or n in layout]


class _Reader(CalibrationDataReader):
    """Feeds the calibration images to onnxruntime's calibrator, a few at a time."""

    def __init__(self, images: np.ndarray, batch: int = _CALIBRATION_BATCH) -> None:
        self._batches: Iterator[np.ndarray] = (
            images[i : i + batch] for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"image": np.ascontiguousarray(batch)}


def quantize_graph(
    src: Path, dst: Path, calibration: np.ndarray, settings: QuantSettings
) -> list[str]:
    """Write the int8 version of the graph ``src`` to ``dst``; returns the nodes kept float."""
    if calibration.dtype != np.uint8 or calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError("calibration images must be a non-empty uint8 (N, H, W, C) array")
    with tempfile.TemporaryDirectory(prefix="scenecam-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference and onnxruntime's basic optimisations; the symbolic pass is for
        # dynamic shapes in transformers and would need sympy.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        keep_float = float_nodes(onnx.load(str(prepared)))
        log.info("quantising %s (%s); kept float: %s", src, settings.label, keep_float)
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QUANT_TYPES[settings.activation_type],
            weight_type=QUANT_TYPES[settings.weight_type],
            nodes_to_exclude=keep_float,
            calibrate_method=CALIBRATION_METHODS[settings.calibration_method],
            # Not CalibMaxIntermediateOutputs: in onnxruntime 1.31 the min-max calibrator drops
            # each full chunk of outputs without merging its ranges, so only the last partial
            # chunk of images would count. All outputs are kept in memory instead (about
            # 2.4 MB per image for the small CNN at 150 px, 8 MB for ResNet-18).
            extra_options={
                "ActivationSymmetric": settings.activation_type == "int8",
                "WeightSymmetric": True,
            },
        )
    return keep_float
