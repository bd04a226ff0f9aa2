"""The self-check at load: a bundle's graph must match its manifest and its head.

The graph's declared input and output shapes are compared with the manifest's before anything
of the manifest's size is allocated; then the graph runs on two probe images and the numpy
head must give the graph's logits from the graph's features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from onnxruntime import InferenceSession

from .bundle import FEATURES, INPUT_NAME, LOGITS, Manifest
from .errors import BundleError
from .head import Head
from .layers import ExplainedLayer

log = logging.getLogger(__name__)

#: How far the numpy head may stray from the graph's logits before a bundle is refused.
SELF_CHECK_TOLERANCE = 1e-3
#: The same for a layer marked ``straight_through`` (int8 layers after it, differentiated as
#: their float originals): the float head on int8 activations against the int8 logits.
STRAIGHT_THROUGH_TOLERANCE = 0.1


def check_graph(where: Path, session: InferenceSession, manifest: Manifest, head: Head) -> None:
    """Refuse a bundle whose graph or default head does not match its manifest. Every
    explained layer's output must be there with its shape; the extra layers' heads are
    checked when first used (:func:`check_layer`)."""
    layers = manifest.layers
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if list(inputs) != ["image"] or inputs["image"].type != "tensor(uint8)":
        raise BundleError(where, f"graph input must be one uint8 'image', got {list(inputs)}")
    expected = sorted([LOGITS, *(layer.output for layer in layers)])
    if sorted(outputs) != expected:
        quoted = [f"'{n}'" for n in expected]
        names = ", ".join(quoted[:-1]) + f" and {quoted[-1]}"
        raise BundleError(where, f"graph outputs must be exactly {names}, got {sorted(outputs)}")
    spec = manifest.input
    _check_declared(
        where, "input 'image'", inputs["image"].shape, (spec.height, spec.width, spec.channels)
    )
    for layer in layers:
        _check_declared(where, f"output '{layer.output}'", outputs[layer.output].shape, layer.shape)
    _check_declared(where, f"output '{LOGITS}'", outputs[LOGITS].shape, (manifest.num_classes,))
    wanted = [LOGITS, *(layer.output for layer in layers)]
    try:
        logits, *values = session.run(wanted, {INPUT_NAME: _probe_batch(manifest)})
    except Exception as exc:  # onnxruntime's own errors (InvalidArgument, Fail, ...)
        reason = " ".join(str(exc).split())[:200]
        raise BundleError(where, f"the graph fails on a probe input ({reason})") from None
    if logits.shape[1:] != (manifest.num_classes,):
        raise BundleError(
            where,
            f"graph logits have {logits.shape[1]} classes, manifest names {manifest.num_classes}",
        )
    for layer, features in zip(layers, values, strict=True):
        what = "features" if layer.output == FEATURES else f"output '{layer.output}'"
        if features.shape[1:] != layer.shape:
            raise BundleError(
                where, f"graph {what} have shape {features.shape[1:]}, manifest says {layer.shape}"
            )
    _check_head(where, head, values[0], logits, layers[0])


def check_layer(
    where: Path, session: InferenceSession, manifest: Manifest, layer: ExplainedLayer, head: Head
) -> None:
    """The self-check of one explained layer's head: from the layer's activations on the
    probe images it must give the graph's logits."""
    logits, features = session.run([LOGITS, layer.output], {INPUT_NAME: _probe_batch(manifest)})
    _check_head(where, head, features, logits, layer)


def _check_head(
    where: Path, head: Head, features: np.ndarray, logits: np.ndarray, layer: ExplainedLayer
) -> None:
    ours = head.logits(features)
    scale = max(1.0, float(np.abs(logits).max()))
    err = float(np.abs(ours - logits).max()) / scale
    limit = STRAIGHT_THROUGH_TOLERANCE if layer.straight_through else SELF_CHECK_TOLERANCE
    if not np.isfinite(err) or err > limit:
        whose = "head" if layer.output == FEATURES else f"head of layer {layer.name!r}"
        raise BundleError(
            where,
            f"{whose} gradient does not belong to this graph: the head gives logits "
            f"{err:.2e} (relative) away from the graph's on the probe input",
        )
    log.debug("self-check of %s (%s): head vs graph logits %.1e", where, layer.name, err)


def _check_declared(
    where: Path, what: str, declared: Sequence[object], manifest: tuple[int, ...]
) -> None:
    """Compare the graph's declared shape (batch axis first; symbolic axes match anything)
    with the manifest's, before anything of the manifest's size is allocated."""
    if not declared:  # no shape information in the graph: the probe checks it
        return
    dims = list(declared)[1:]
    if len(dims) != len(manifest) or any(
        isinstance(d, int) and d != m for d, m in zip(dims, manifest, strict=True)
    ):
        raise BundleError(
            where,
            f"graph {what} has shape {list(declared)}, the manifest says {['N', *manifest]}",
        )


def _probe_batch(manifest: Manifest) -> np.ndarray:
    """Deterministic probe images: seeded noise and a smooth ramp."""
    h, w, c = manifest.input.height, manifest.input.width, manifest.input.channels
    noise = np.random.default_rng(0).integers(0, 256, size=(h, w, c), dtype=np.uint8)
    ramp = np.broadcast_to(
        np.linspace(0, 255, w, dtype=np.float32)[None, :, None], (h, w, c)
    ).astype(np.uint8)
    return np.stack([noise, ramp])
