"""Float bundle -> int8 bundle: onnxruntime static quantisation, checked against the float model.

The parts: :mod:`.calibration` (the images), :mod:`.int8_graph` (which nodes stay float, the
quantisation itself), :mod:`.compare` (int8 against float), and here the packaging.

The trunk (every convolution up to the ``features`` output) is quantised in QDQ form: by default
uint8 activations and int8 per-channel weights (U8S8), calibrated with min-max ranges on a few
hundred training images. The classifier head (the nodes after the Grad-CAM layer that make the
``logits``, e.g. GlobalAveragePool, MatMul, Add) and the layout nodes that make the
``features`` output stay in float. So the graph's logits are computed from the very
(dequantised, float32) features it returns, exactly as the numpy head computes them, and the
runtime's load-time self-check holds unchanged. ``head.npz`` is copied as it is.

Before the new bundle is moved into place it is loaded through :class:`SceneCam` (manifest,
checksums, self-check) and compared with the float bundle on held-out images: accuracy (when
the images are labelled), prediction agreement, and the Pearson correlation of the two
models' Grad-CAM maps at feature resolution. The figures go into the manifest's
``quantization`` block. Needs ``onnx`` (the ``train`` extra), not TensorFlow.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from scenecam_edge import SceneCam
from scenecam_edge._version import __version__
from scenecam_edge.bundle import write_manifest
from scenecam_edge.fileio import folder_replaced_on_success
from scenecam_edge.registry import resolve_model

from .calibration import (
    DEFAULT_CACHE_DIR,
    CalibrationData,
    calibration_data,
    default_cache_dir,
)
from .compare import Comparison, compare, pearson
from .int8_graph import float_nodes, quantize_graph
from .quant_settings import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_SEED,
    DEFAULT_VAL_FRACTION,
    MAX_ACCURACY_DROP_POINTS,
    MIN_CAM_CORRELATION,
    QUANT_TYPES,
    QuantizeError,
    QuantSettings,
    TargetMissed,
)

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_CALIBRATION_IMAGES",
    "DEFAULT_SEED",
    "DEFAULT_VAL_FRACTION",
    "MAX_ACCURACY_DROP_POINTS",
    "MIN_CAM_CORRELATION",
    "QUANT_TYPES",
    "CalibrationData",
    "Comparison",
    "QuantSettings",
    "QuantizeError",
    "QuantizeResult",
    "TargetMissed",
    "calibration_data",
    "compare",
    "default_cache_dir",
    "float_nodes",
    "pearson",
    "quantize_bundle",
    "quantize_graph",
]

log = logging.getLogger(__name__)


@dataclass
class QuantizeResult:
    path: Path
    comparison: Comparison
    manifest: dict[str, Any]


# -- the bundle ------------------------------------------------------------------------------


def quantize_bundle(
    bundle: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    data: CalibrationData,
    *,
    settings: QuantSettings | None = None,
    name: str | None = None,
    description: str | None = None,
    command: str | None = None,
    max_accuracy_drop_points: float = MAX_ACCURACY_DROP_POINTS,
    min_cam_correlation: float = MIN_CAM_CORRELATION,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Write the int8 version of ``bundle`` (a folder or shipped name) into ``out_dir``.

    The new bundle is built in a temporary folder beside ``out_dir``, loaded through
    :class:`SceneCam` (so its manifest, checksums and self-check are tested), compared with
    the float bundle on ``data.evaluation``, and moved into place only when it meets the
    targets (accuracy within ``max_accuracy_drop_points``, mean Grad-CAM correlation at least
    ``min_cam_correlation``); otherwise :class:`QuantizeError` says what missed.
    """
    settings = settings or QuantSettings()
    say = progress or (lambda message: log.info("%s", message))
    source = resolve_model(bundle)
    reference = SceneCam.load(source, threads=threads)
    out = Path(out_dir)
    if out.resolve() == source.resolve():
        raise QuantizeError(f"{out} is the float bundle itself; write the int8 one elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise QuantizeError(f"{out} exists and is not empty (pass overwrite=True / --force)")
    original = reference.manifest.raw  # validated by the load
    if original.get("quantization"):
        raise QuantizeError(f"{source} is already quantised; start from the float bundle")

    with folder_replaced_on_success(out) as staging:
        say(f"quantising {source} ({settings.label}, {len(data.calibration)} calibration images)")
        keep_float = quantize_graph(
            source / "model.onnx", staging / "model.onnx", data.calibration, settings
        )
        for fname in original["files"]:  # the head's arrays (and anything else) as they are
            if fname != "model.onnx":
                shutil.copyfile(source / fname, staging / fname)
        straight = _straight_through(original, staging)
        if description is None:
            weights = ", per-channel weights" if settings.per_channel else ""
            description = (
                f"{original.get('name', source.name)} quantised to int8 "
                f"({settings.label} QDQ{weights})"
            )
        manifest = _int8_manifest(original, name or out.name, description)
        for entry in manifest.get("extra_layers", []):
            if entry["name"] in straight:
                entry["straight_through"] = True
                entry["vjp_weights"] = "int8, symmetric, one scale per output channel"
        manifest = write_manifest(staging, manifest, checksum=original["files"])
        candidate = SceneCam.load(staging, threads=threads)  # checksums and self-check
        for layer in candidate.layers[1:]:  # the extra heads' self-checks (straight-through)
            candidate.heads[layer.name]
        say(f"comparing float and int8 on {len(data.evaluation)} images")
        comparison = compare(
            reference,
            candidate,
            data.evaluation,
            data.labels,
            on=str(data.info.get("compared_on", "")),
        )
        manifest["quantization"] = {
            "method": "onnxruntime static quantisation (quantize_static), QDQ",
            "format": "QDQ",
            "activation_type": settings.activation_type,
            "weight_type": settings.weight_type,
            "label": settings.label,
            "per_channel": settings.per_channel,
            "reduce_range": settings.reduce_range,
            "calibration": {"method": settings.calibration_method, **data.info},
            "kept_float": keep_float,
            "float_bundle": {
                "name": original.get("name"),
                "model_sha256": original["files"]["model.onnx"],
            },
            "size_bytes": {
                "float": (source / "model.onnx").stat().st_size,
                "int8": (staging / "model.onnx").stat().st_size,
            },
            "comparison": comparison.as_dict(),
            "command": command,
        }
        # a model trained on every image keeps its recipe's estimate: on photos it trained on,
        # the int8 figures (in "comparison") say how well it fits them, not how it generalises
        if comparison.int8_figures is not None and not reference.manifest.trained_on_every_image:
            manifest["evaluation"] = {
                "on": "validation split",
                **comparison.int8_figures,
                "float_accuracy": comparison.float_accuracy,
            }
        write_manifest(staging, manifest)
        SceneCam.load(staging, threads=threads)  # the final manifest validates too
        problems = comparison.misses(max_accuracy_drop_points, min_cam_correlation)
        if problems:
            raise TargetMissed("the int8 model was not written: " + "; ".join(problems))
    log.info("wrote %s", out)
    return QuantizeResult(out, comparison, manifest)


def _straight_through(original: dict[str, Any], staging: Path) -> list[str]:
    """Extra layers explained through a VJP graph lie inside the quantised trunk: the layers
    after them run in int8, which has no gradient. Their gradient becomes the straight-through
    one: the float layers, with their weights rounded to int8 as the model's are (stored as
    int8 in the graph, a quarter of the size). Returns the names of those layers."""
    from .onnx_weights import quantize_weights

    names = []
    for entry in original.get("extra_layers", []):
        graphs = [s["file"] for s in entry["head"]["layers"] if s["type"] == "graph"]
        for fname in graphs:
            graph = onnx.load(str(staging / fname))
            saved = quantize_weights(graph)
            (staging / fname).write_bytes(graph.SerializeToString())
            log.info("%s: VJP graph weights in int8 (%.1f MB less)", entry["name"], saved / 1e6)
        if graphs:
            names.append(entry["name"])
    return names


def _int8_manifest(original: dict[str, Any], name: str, description: str) -> dict[str, Any]:
    """The float bundle's manifest renamed and re-attributed (``files`` is checksummed when it
    is written)."""
    manifest = copy.deepcopy(original)
    manifest["name"] = name
    manifest["description"] = description
    manifest["producer"] = {
        **original.get("producer", {}),
        "quantized_by": f"scenecam_edge {__version__}",
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
    }
    return manifest
