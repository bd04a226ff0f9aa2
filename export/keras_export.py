"""Export a Keras image classifier to a bundle the TensorFlow-free runtime can serve.

The steps, one module each:

- :mod:`.graph`: the model as a flat list of steps (nested models inlined), replayed in
  TensorFlow from any starting value;
- :mod:`.head_spec`: the Grad-CAM layer and the head after it, as numpy-runnable layers;
- :mod:`.vjp`: when that head is more than numpy runs in closed form, a second ONNX graph
  computing the vector-Jacobian product;
- :mod:`.preprocess`: pixel scaling that lives outside the model, baked into the graph;
- here: the served graph (uint8 ``image`` -> ``features``, pre-softmax ``logits``), the
  manifest, and the check of the bundle against Keras before it is moved into place.

Every failure is an :class:`ExportError` whose message names the layer and the reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from scenecam_edge import SceneCam
from scenecam_edge._version import __version__
from scenecam_edge.bundle import FEATURES, LOGITS, SCHEMA_VERSION, write_manifest
from scenecam_edge.fileio import folder_replaced_on_success
from scenecam_edge.head import HEAD_LAYERS

from .errors import ExportError
from .grad_ops import HANDLERS
from .graph import Graph, ends_in_softmax, evaluate, first_line, flatten
from .head_spec import HeadPlan, plan_head
from .preprocess import Preprocess, parse
from .vjp import build_vjp_graph, quiet_converter

log = logging.getLogger(__name__)

OPSET = 17
HEAD_FILE = "head.npz"
GRAPH_HEAD_FILE = "head.onnx"
#: Largest |softmax(onnx) - keras| accepted when the export checks itself.
PARITY_TOLERANCE = 1e-4
#: Layers that scale pixels: a model starting with one needs no --preprocess.
_SCALING = (keras.layers.Rescaling, keras.layers.Normalization)

__all__ = ["ExportError", "HeadPlan", "export_keras", "split_head"]


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
    preprocess: str | Preprocess | None = None,
    extra_layers: Sequence[str] = (),
) -> Path:
    """Write a bundle for ``model`` (a Keras model or a ``.keras`` path) into ``out_dir``.

    ``conv_layer`` names the Grad-CAM layer (``outer/inner`` inside a nested model); by
    default it is the last layer with spatial extent before the head. ``preprocess`` scales
    raw pixels before the model (see :mod:`scenecam_edge.export.preprocess`).
    ``extra_layers`` names more layers to explain on request (``--layer`` at serve time):
    each one becomes another output of ``model.onnx`` with its own head (closed form, or a
    VJP graph), listed in the manifest's ``extra_layers``; the default stays ``conv_layer``. The bundle is
    built in a temporary folder, checked (ONNX against Keras, the runtime's load-time
    self-check), and only then moved into place.
    """
    if not isinstance(model, keras.Model):
        try:
            model = keras.models.load_model(model, compile=False)
        except Exception as exc:
            raise ExportError(f"cannot load the model ({first_line(exc)})") from None
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty (pass overwrite=True / --force)")
    scaling = preprocess if isinstance(preprocess, Preprocess) else parse(preprocess)

    graph = flatten(model)
    height, width, channels = _input_shape(graph)
    scaling.check(channels)
    if preprocess is None and not _starts_with_scaling(graph):
        log.warning(
            "model %r starts with no scaling layer and no --preprocess was given: the bundle "
            "feeds it raw 0..255 pixels (pass --preprocess if it was trained on scaled ones)",
            model.name,
        )
    plan = plan_head(graph, conv_layer)
    num_classes = _num_classes(graph)
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ExportError(f"the model has {num_classes} outputs but {len(class_names)} class names")

    extras = _extra_plans(graph, plan, extra_layers)
    strip = ends_in_softmax(graph)
    onnx_bytes = _serving_graph(graph, [plan, *extras], scaling, strip, (height, width, channels))
    vjps = [
        build_vjp_graph(graph, p, num_classes, strip, OPSET) if p.chain is None else None
        for p in [plan, *extras]
    ]

    with folder_replaced_on_success(out) as staging:
        (staging / "model.onnx").write_bytes(onnx_bytes)
        files = ["model.onnx"]
        for index, (p, vjp_bytes) in enumerate(zip([plan, *extras], vjps, strict=True)):
            files += _write_head(staging, index, p, vjp_bytes, strip)
        manifest = _manifest(
            model, graph, plan, scaling, (height, width, channels), list(class_names),
            name=name or out.name, description=description, training=training,
            evaluation=evaluation,
        )  # fmt: skip
        if extras:
            manifest["extra_layers"] = [
                _layer_entry(graph, p, i) for i, p in enumerate(extras, start=1)
            ]
        write_manifest(staging, manifest, checksum=files)
        _check_parity(model, staging, scaling, strip, (height, width, channels))
    log.info("exported %s -> %s (Grad-CAM layer %s)", model.name, out, plan.features_path)
    return out


def _extra_plans(graph: Graph, default: HeadPlan, names: Sequence[str]) -> list[HeadPlan]:
    """A plan for each extra layer; refuses repeats and the default layer itself."""
    plans: list[HeadPlan] = []
    for layer in names:
        extra = plan_head(graph, layer)
        taken = [default.features_path, *(p.features_path for p in plans)]
        if extra.features_path in taken:
            raise ExportError(f"layer {layer!r} is already explained by this bundle")
        plans.append(extra)
    return plans


def head_file_names(index: int) -> tuple[str, str]:
    """The arrays file and the VJP graph file of explained layer ``index`` (0: the default)."""
    if index == 0:
        return HEAD_FILE, GRAPH_HEAD_FILE
    return f"head_{index}.npz", f"head_{index}.onnx"


def _write_head(
    staging: Path, index: int, plan: HeadPlan, vjp_bytes: bytes | None, strip: bool
) -> list[str]:
    """Write one explained layer's head files; returns their names. A VJP graph replaces
    the plan's layers with one ``graph`` layer."""
    arrays_file, graph_file = head_file_names(index)
    np.savez(staging / arrays_file, allow_pickle=False, **plan.arrays)
    if vjp_bytes is None:
        return [arrays_file]
    (staging / graph_file).write_bytes(vjp_bytes)
    plan.specs = [{"type": "graph", "file": graph_file}]
    plan.final_activation = "softmax" if strip else "linear"
    return [arrays_file, graph_file]


def _head_entry(plan: HeadPlan, arrays_file: str) -> dict[str, Any]:
    for spec in plan.specs:  # every layer written is one the runtime's registry builds
        kind = HEAD_LAYERS.get(spec["type"])
        if kind is None or not set(kind.fields) <= set(spec):
            raise ExportError(f"internal: head layer {spec!r} is not one the runtime reads")
    return {"file": arrays_file, "layers": plan.specs, "final_activation": plan.final_activation}


def _layer_entry(graph: Graph, plan: HeadPlan, index: int) -> dict[str, Any]:
    """The manifest's record of extra layer ``index``."""
    graph_head = plan.chain is None
    return {
        "name": plan.features_path,
        "output": f"{FEATURES}_{index}",
        "shape": [None, *(int(d) for d in graph.shapes[plan.features_id][1:])],
        "head": _head_entry(plan, head_file_names(index)[0]),
        "gradient": "vjp_graph" if graph_head else "closed_form",
    }


def split_head(model: keras.Model, conv_layer: str | None = None) -> HeadPlan:
    """The Grad-CAM layer and the head after it, as the export would write them."""
    return plan_head(flatten(model), conv_layer)


def _serving_graph(
    graph: Graph,
    plans: list[HeadPlan],
    scaling: Preprocess,
    strip: bool,
    hwc: tuple[int, int, int],
) -> bytes:
    """uint8 ``image`` -> ``features`` (the first plan's layer), ``logits`` and
    ``features_<i>`` for each further plan."""
    import tf2onnx  # imported here: slow, and only export needs it

    mean, std = scaling.arrays(hwc[2])
    input_dtype = tf.as_dtype(graph.input_dtype)

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([None, *hwc], tf.uint8, name="image")],
    )
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.cast(image, tf.float32)
        if not scaling.is_identity:
            if scaling.bgr:
                x = tf.reverse(x, axis=[-1])
            x = (x - tf.constant(mean)) / tf.constant(std)
        logits, *features = evaluate(
            graph,
            {graph.input_id: tf.cast(x, input_dtype)},
            [graph.output_id, *(p.features_id for p in plans)],
            strip_softmax=graph.output_id if strip else None,
        )
        names = [FEATURES] + [f"{FEATURES}_{i}" for i in range(1, len(plans))]
        out = {name: tf.cast(f, tf.float32) for name, f in zip(names, features, strict=True)}
        return {**out, LOGITS: tf.cast(logits, tf.float32)}

    try:
        with quiet_converter():
            model, _ = tf2onnx.convert.from_function(
                serve,
                input_signature=serve.input_signature,
                opset=OPSET,
                custom_op_handlers={name: (fn, []) for name, fn in HANDLERS.items()},
            )
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"the graph cannot be converted to ONNX ({first_line(exc)})") from None
    leftovers = sorted({n.name for n in model.graph.node if "PartitionedCall" in n.op_type})
    if leftovers:
        raise ExportError(f"a function call survived conversion at {leftovers[0]}")
    data: bytes = model.SerializeToString()
    return data


def _manifest(
    model: keras.Model,
    graph: Graph,
    plan: HeadPlan,
    scaling: Preprocess,
    hwc: tuple[int, int, int],
    class_names: list[str],
    **info: Any,
) -> dict[str, Any]:
    import tf2onnx

    return {
        "schema_version": SCHEMA_VERSION,
        "name": info["name"],
        "description": info["description"],
        "class_names": class_names,
        "input": {
            "name": "image",
            "dtype": "uint8",
            "layout": "NHWC",
            "height": hwc[0],
            "width": hwc[1],
            "channels": hwc[2],
        },
        "preprocess": scaling.to_manifest(),
        "outputs": {
            FEATURES: {
                "dtype": "float32",
                "shape": [None, *(int(d) for d in graph.shapes[plan.features_id][1:])],
            },
            LOGITS: {"dtype": "float32", "shape": [None, len(class_names)]},
        },
        "conv_layer": plan.features_path,
        "head": _head_entry(plan, HEAD_FILE),
        "producer": {
            "scenecam_edge": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx_opset": OPSET,
            "source_model": model.name,
        },
        "training": info["training"],
        "evaluation": info["evaluation"],
    }


def _check_parity(
    model: keras.Model,
    bundle: Path,
    scaling: Preprocess,
    strip: bool,
    hwc: tuple[int, int, int],
) -> None:
    """The bundle must agree with Keras and pass the runtime's own load-time checks."""
    from scenecam_edge.errors import BundleError

    try:
        loaded = SceneCam.load(bundle, threads=1)
        for layer in loaded.layers[1:]:  # extra heads are checked on first use: use them now
            loaded.heads[layer.name]
    except BundleError as exc:
        raise ExportError(f"the written bundle does not load ({exc})") from None
    rng = np.random.default_rng(1234)
    images = rng.integers(0, 256, size=(4, *hwc), dtype=np.uint8)
    _, logits = loaded.forward(images)
    keras_in = scaling.apply(images.astype(np.float32)).astype(np.float32)
    keras_out = np.asarray(model(keras_in, training=False), dtype=np.float64)
    ours = logits.astype(np.float64)
    if strip:
        ours = np.exp(ours - ours.max(axis=1, keepdims=True))
        ours /= ours.sum(axis=1, keepdims=True)
    diff = float(np.abs(ours - keras_out).max())
    if not diff <= PARITY_TOLERANCE * max(1.0, float(np.abs(keras_out).max())):
        raise ExportError(f"the ONNX graph disagrees with Keras by {diff:.2e}")


def _input_shape(graph: Graph) -> tuple[int, int, int]:
    shape = graph.shapes[graph.input_id]
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ExportError(f"model input must be (None, H, W, C) with fixed sizes, not {shape}")
    return int(shape[1]), int(shape[2]), int(shape[3])


def _num_classes(graph: Graph) -> int:
    shape = graph.shapes[graph.output_id]
    if len(shape) != 2 or shape[1] is None:
        raise ExportError(f"model output must be (None, classes), not {shape}")
    return int(shape[1])


def _starts_with_scaling(graph: Graph) -> bool:
    """True when pixels are scaled before the first layer with weights."""
    for step in graph.steps:
        if isinstance(step.op, _SCALING) or not isinstance(step.op, keras.layers.Layer):
            return True  # a scaling layer, or keras.ops arithmetic (a preprocess_input)
        if step.op.weights:
            return False
    return False
