"""Recover a Keras model from an exported bundle's ``model.onnx``, when the checkpoint is gone.

The shipped ``scenes-resnet18`` has no Keras checkpoint any more (its run folder was lost),
yet Grad-CAM at an earlier layer needs the Keras model: the VJP graph is TensorFlow's own
gradient, traced at export. This module rebuilds the architecture from
:mod:`scenecam_edge.training.architectures` and fills its weights from the ONNX initializers:

- tf2onnx (through Grappler) folds each inference-mode ``BatchNormalization`` into the
  convolution before it: the kernel becomes ``kernel * gamma / sqrt(var + eps)``
  (initializer ``<conv>/convolution/merged_input``) and the normalisation a bias
  ``beta - mean * gamma / sqrt(var + eps)`` (``<bn>/batchnorm/sub``). The recovered model
  keeps the folded kernel and turns the batch norm into that bias alone: gamma 1, mean 0 and
  a variance of ``1 - eps``, so ``1 / sqrt(var + eps)`` is exactly 1 in float32 and a new
  export folds the very same numbers back.
- Every other weight (``Dense`` kernel and bias) is matched by its layer's name in the
  initializer's scope or, failing that, by a shape no other initializer has.

The recovered model is checked against the graph before it is returned: Keras logits must
equal the ONNX logits (softmax stripped) within ``tolerance`` on the images given.

Re-create the shipped model and re-export it with its stage-3 maps as an extra layer::

    python -m scenecam_edge.export.recover models/scenes-resnet18 --arch resnet18 \\
        --check-images ../shared/data/intel-scenes/train --save /tmp/scenes-resnet18.keras \\
        --export-to /tmp/scenes-resnet18 --extra-layer stage3_block2_out
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ExportError

log = logging.getLogger(__name__)

#: Largest |keras - onnx| logit difference accepted.
RECOVERY_TOLERANCE = 1e-4
_SUFFIX = re.compile(r"_\d+$")


def onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    """Every initializer of an ONNX file, by name."""
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _scopes(name: str) -> list[str]:
    """The scope names in an initializer's name, Keras's ``_1`` call suffixes removed."""
    return [_SUFFIX.sub("", part) for part in name.split("/")]


def _named(inits: dict[str, np.ndarray], layer: str, tail: str) -> np.ndarray | None:
    hits = [v for k, v in inits.items() if layer in _scopes(k) and k.endswith(tail)]
    if len(hits) > 1:
        raise ExportError(f"layer {layer!r}: {len(hits)} initializers end in {tail!r}")
    return hits[0] if hits else None


def load_onnx_weights(model: keras.Model, inits: dict[str, np.ndarray]) -> list[str]:
    """Set ``model``'s weights from the initializers; returns the layers filled.

    Raises :class:`ExportError` naming the first layer whose weights are missing or do not
    fit. Layers without weights (activations, pooling, adds) are skipped; a ``Rescaling``
    layer is checked against the graph's scaling constants when they can be found.
    """
    used: set[int] = set()
    filled: list[str] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = _named(inits, layer.name, "merged_input:0")
            if kernel is None:
                kernel = _named(inits, layer.name, "kernel:0")
            if kernel is None:
                raise ExportError(f"no folded kernel for convolution {layer.name!r}")
            hwio = np.transpose(kernel, (2, 3, 1, 0))
            _assign(layer, [hwio] + ([] if not layer.use_bias else [_bias(inits, layer)]))
            used.add(id(kernel))
        elif isinstance(layer, keras.layers.BatchNormalization):
            bias = _named(inits, layer.name, "batchnorm/sub:0")
            if bias is None:
                raise ExportError(f"no folded bias for batch normalisation {layer.name!r}")
            eps = np.float32(layer.epsilon)
            ones = np.ones_like(bias, dtype=np.float32)
            variance = np.full_like(ones, np.float32(1) - eps)
            if not np.all(variance + eps == 1):
                raise ExportError(f"{layer.name!r}: epsilon {layer.epsilon} cannot fold exactly")
            _assign(layer, [ones, bias.astype(np.float32), np.zeros_like(ones), variance])
            used.add(id(bias))
        elif isinstance(layer, keras.layers.Dense):
            kernel = _named(inits, layer.name, "kernel:0")
            bias = _named(inits, layer.name, "bias:0")
            if kernel is None:
                kernel = _by_shape(inits, used, tuple(layer.kernel.shape), layer.name)
            if bias is None and layer.use_bias:
                bias = _by_shape(inits, used, tuple(layer.bias.shape), layer.name, zeros=True)
            _assign(layer, [kernel] + ([bias] if bias is not None and layer.use_bias else []))
            used.update({id(kernel), id(bias)})
        elif layer.weights:
            raise ExportError(f"layer {layer.name!r} ({type(layer).__name__}) is not recovered")
        else:
            continue
        filled.append(layer.name)
    return filled


def _bias(inits: dict[str, np.ndarray], layer: keras.layers.Layer) -> np.ndarray:
    bias = _named(inits, layer.name, "bias:0")
    if bias is None:
        raise ExportError(f"no bias for convolution {layer.name!r}")
    return bias


def _by_shape(
    inits: dict[str, np.ndarray],
    used: set[int],
    shape: tuple[int, ...],
    where: str,
    zeros: bool = False,
) -> np.ndarray:
    """The one unused initializer of ``shape``. With ``zeros`` (a bias), none at all means
    zeros: tf2onnx drops the addition of an all-zero bias. The comparison with the graph
    that follows recovery catches a wrong guess."""
    hits = [v for v in inits.values() if v.shape == shape and id(v) not in used]
    if not hits and zeros:
        log.info("layer %r: no initializer of shape %s, taken as zeros", where, shape)
        return np.zeros(shape, np.float32)
    if len(hits) != 1:
        raise ExportError(f"layer {where!r}: {len(hits)} initializers of shape {shape}")
    return hits[0]


def _assign(layer: keras.layers.Layer, values: list[np.ndarray]) -> None:
    expected = [tuple(w.shape) for w in layer.weights]
    got = [tuple(v.shape) for v in values]
    if expected != got:
        raise ExportError(f"layer {layer.name!r} needs weights {expected}, the graph has {got}")
    layer.set_weights([np.asarray(v, np.float32) for v in values])


def check_against_graph(
    model: keras.Model, onnx_path: Path, images: np.ndarray, tolerance: float = RECOVERY_TOLERANCE
) -> float:
    """Largest |Keras logits - ONNX logits| on uint8 ``images`` (N, H, W, C); raises
    :class:`ExportError` above ``tolerance``. Keras's softmax is undone by taking logs and
    centring both sides, which leaves logits comparable up to their per-image shift."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    theirs = session.run(["logits"], {"image": images})[0].astype(np.float64)
    head = model.layers[-1]
    pre = keras.Model(model.inputs, head.input)
    ours = np.asarray(pre(images.astype(np.float32), training=False), np.float64)
    ours = ours @ np.asarray(head.kernel, np.float64) + np.asarray(head.bias, np.float64)
    diff = float(np.abs(ours - theirs).max())
    if not diff <= tolerance:
        raise ExportError(f"the recovered model's logits differ from the graph's by {diff:.2e}")
    return diff


def graft_outputs(original: Path, exported: Path) -> onnx.ModelProto:
    """``original``'s graph, node for node, with the extra ``features_<i>`` outputs of
    ``exported`` added: each is the same tensor (found by its name without the model's scope)
    put through the same layout ``Transpose``. The default outputs then stay bit for bit what
    they were, which a re-export does not promise: folding the recovered batch norms again
    multiplies each kernel by ``1 / sqrt(var + eps)``, which TensorFlow's vectorised rsqrt
    rounds to one ulp below 1 for some kernels."""
    base, new = onnx.load(str(original)), onnx.load(str(exported))
    have = {o.name for o in base.graph.output}
    tensors = {out for node in base.graph.node for out in node.output}
    producer = {out: node for node in new.graph.node for out in node.output}
    for output in new.graph.output:
        if output.name in have:
            continue
        layout = producer[output.name]
        if layout.op_type != "Transpose":
            raise ExportError(f"output {output.name!r} does not come from a layout Transpose")
        tail = layout.input[0]
        matches = [t for t in tensors if t == tail or t.endswith("/" + tail)]
        if not matches and "/" in tail:  # the exported graph has a model scope, the original not
            tail = tail.split("/", 1)[1]
            matches = [t for t in tensors if t == tail or t.endswith("/" + tail)]
        if len(matches) != 1:
            raise ExportError(f"{tail!r} is in the original graph {len(matches)} times")
        node = onnx.helper.make_node(
            "Transpose", [matches[0]], [output.name], name=f"graft_{output.name}"
        )
        node.attribute.extend(layout.attribute)
        base.graph.node.append(node)
        base.graph.output.append(output)
    onnx.checker.check_model(base)
    return base


def photos(folder: Path, per_class: int, size: tuple[int, int]) -> np.ndarray:
    """The first ``per_class`` photos of each class folder, resized as the runtime does."""
    from scenecam_edge.images import load_image, resize_to

    files = [
        f
        for d in sorted(p for p in folder.iterdir() if p.is_dir())
        for f in sorted(d.iterdir())[:per_class]
    ]
    return np.stack([resize_to(load_image(f, channels=3), *size) for f in files])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle folder whose model.onnx to read")
    parser.add_argument("--arch", default="resnet18", help="training.architectures name")
    parser.add_argument("--check-images", type=Path, required=True, help="class folders")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--save", type=Path, help="write the recovered model (.keras)")
    parser.add_argument("--export-to", type=Path, help="re-export it as a bundle here")
    parser.add_argument("--extra-layer", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from scenecam_edge.training.architectures import build

    from .keras_export import export_keras

    manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    spec = manifest["input"]
    size = (spec["height"], spec["width"])
    model, conv_layer = build(args.arch, size, spec["channels"], len(manifest["class_names"]))
    filled = load_onnx_weights(model, onnx_initializers(args.bundle / "model.onnx"))
    images = photos(args.check_images, args.per_class, size)
    diff = check_against_graph(model, args.bundle / "model.onnx", images)
    log.info("recovered %d layers; logits agree within %.1e on %d photos", len(filled), diff,
             len(images))  # fmt: skip
    if args.save:
        model.save(args.save)
    if args.export_to:
        out = export_keras(
            model,
            args.export_to,
            manifest.get("conv_layer") or conv_layer,
            list(manifest["class_names"]),
            name=manifest["name"],
            description=manifest.get("description") or "",
            training=manifest.get("training"),
            evaluation=manifest.get("evaluation"),
            extra_layers=args.extra_layer,
        )
        if args.extra_layer:
            _keep_original_graph(args.bundle, out)


def _keep_original_graph(original: Path, out: Path) -> None:
    """Put the original graph, with the extra outputs grafted on, in place of the re-exported
    one, and check the bundle again (checksums, self-check of every head).

    The new bundle is built beside ``out`` (a copy of its files, the grafted graph, the
    manifest through ``write_manifest`` with fresh checksums), checked, and only then renamed
    over it: an interruption at any point leaves ``out`` as the export wrote it, never a
    ``model.onnx`` its manifest's checksum does not match."""
    from scenecam_edge import SceneCam
    from scenecam_edge.bundle import MANIFEST, write_manifest
    from scenecam_edge.fileio import folder_replaced_on_success, write_bytes_atomic

    grafted = graft_outputs(original / "model.onnx", out / "model.onnx")
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    manifest["producer"]["graph"] = (
        f"{original.name}'s model.onnx with the extra layers' outputs grafted on "
        "(scenecam_edge.export.recover); head graphs from the recovered Keras model"
    )
    with folder_replaced_on_success(out) as staging:
        for path in out.iterdir():
            if path.is_file() and path.name not in ("model.onnx", MANIFEST):
                shutil.copy2(path, staging / path.name)
        write_bytes_atomic(staging / "model.onnx", grafted.SerializeToString())
        write_manifest(staging, manifest, checksum=list(manifest["files"]))
        loaded = SceneCam.load(staging)
        for layer in loaded.layers[1:]:  # their heads' self-checks against the original graph
            loaded.heads[layer.name]
    names = ", ".join(layer["name"] for layer in manifest["extra_layers"])
    log.info("kept %s's graph, with %s grafted on", original, names)


if __name__ == "__main__":
    main()
