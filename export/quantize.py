"""Float bundle -> int8 bundle: onnxruntime static quantisation, checked against the float model.

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

import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from scenecam_edge import SceneCam
from scenecam_edge._version import __version__
from scenecam_edge.bundle import FEATURES, LOGITS, MANIFEST, sha256_file
from scenecam_edge.cam import CamInputs, get_method, softmax
from scenecam_edge.errors import ImageError
from scenecam_edge.fileio import folder_replaced_on_success
from scenecam_edge.images import load_image, resize_to
from scenecam_edge.registry import resolve_model
from scenecam_edge.sources import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

#: Calibration images taken from the training side of the split.
DEFAULT_CALIBRATION_IMAGES = 300
#: The split training and ``evaluate --split`` use: validation fraction and seed.
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_SEED = 1337
#: Where training caches decoded data sets; reusing it saves decoding the folder again.
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "scenecam-edge"
#: Targets the int8 model must meet against the float one, or it is not written.
MAX_ACCURACY_DROP_POINTS = 1.0
MIN_CAM_CORRELATION = 0.9

QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Nodes that only move data between the Grad-CAM layer's tensor and the ``features`` output.
_LAYOUT_OPS = ("Transpose", "Identity", "Reshape", "Cast")
_CALIBRATION_BATCH = 10


class QuantizeError(ValueError):
    """The bundle cannot be quantised; the message says why."""


class TargetMissed(QuantizeError):
    """The int8 model misses an accuracy or heatmap target against the float one; it was not
    written."""


@dataclass(frozen=True)
class QuantSettings:
    """How to quantise: QDQ, with these activation and weight types (``uint8``/``int8``)."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    calibration_method: str = "minmax"

    def __post_init__(self) -> None:
        for what, value in (("activation", self.activation_type), ("weight", self.weight_type)):
            if value not in QUANT_TYPES:
                raise ValueError(f"{what} type must be one of {sorted(QUANT_TYPES)}, not {value!r}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration method must be one of {sorted(CALIBRATION_METHODS)}, "
                f"not {self.calibration_method!r}"
            )

    @property
    def label(self) -> str:
        """U8S8, S8S8, ...: activation and weight types in the usual short form."""
        short = {"uint8": "U8", "int8": "S8"}
        return short[self.activation_type] + short[self.weight_type]


@dataclass
class CalibrationData:
    """Model-sized uint8 images: some to calibrate on, others to compare the models on."""

    calibration: np.ndarray
    evaluation: np.ndarray
    labels: np.ndarray | None  # of the evaluation images; None for an unlabelled folder
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    """The int8 model against the float one on the same images."""

    on: str
    images: int
    prediction_agreement: float
    cam_correlation_mean: float
    cam_correlation_median: float
    cam_correlation_min: float
    float_accuracy: float | None = None
    int8_accuracy: float | None = None
    cam: str = "gradcam, logit space, the float model's predicted class, at feature resolution"
    #: The int8 model's classification figures (with labels); they become its evaluation.
    int8_figures: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.float_accuracy is None or self.int8_accuracy is None:
            return None
        return 100.0 * (self.float_accuracy - self.int8_accuracy)

    def as_dict(self) -> dict[str, Any]:
        figures = asdict(self)
        del figures["int8_figures"]
        return {**figures, "accuracy_drop_points": self.accuracy_drop_points}

    def misses(self, max_drop_points: float, min_correlation: float) -> list[str]:
        """What misses its target, in words (empty when everything holds)."""
        problems = []
        drop = self.accuracy_drop_points
        if drop is not None and drop > max_drop_points:
            problems.append(
                f"int8 accuracy {self.int8_accuracy:.4f} is {drop:.2f} points below float "
                f"{self.float_accuracy:.4f} (allowed {max_drop_points})"
            )
        if not self.cam_correlation_mean >= min_correlation:
            problems.append(
                f"mean Grad-CAM correlation {self.cam_correlation_mean:.3f} is below "
                f"{min_correlation}"
            )
        return problems


@dataclass
class QuantizeResult:
    path: Path
    comparison: Comparison
    manifest: dict[str, Any]


# -- data ------------------------------------------------------------------------------------


def calibration_data(
    source: str | os.PathLike[str],
    cam: SceneCam,
    images: int = DEFAULT_CALIBRATION_IMAGES,
    *,
    val_fraction: float | None = None,
    seed: int | None = None,
    cache_dir: Path | None = None,
) -> CalibrationData:
    """Calibration and comparison images from ``source``, decoded as training decodes them.

    A labelled data set (class-per-folder with the model's classes, or an ``.npz``) is split as
    training splits it (``stratified_split(labels, val_fraction, seed)``; by default the split
    the model's manifest records, else 0.15 and 1337): ``images`` picked at random (seeded)
    from the training side calibrate, the validation side is compared on. Any other folder of
    images is unlabelled: the first ``images`` of a seeded shuffle calibrate and the rest (or,
    when none are left, the same ones) are compared on.
    """
    from scenecam_edge.dataset import class_folders, load_dataset, stratified_split

    if images < 1:
        raise ValueError(f"calibration images must be at least 1, not {images}")
    split = (cam.manifest.training or {}).get("split") or {}
    if val_fraction is None:
        val_fraction = float(split.get("val_fraction", DEFAULT_VAL_FRACTION))
    if seed is None:
        seed = int(split.get("seed", DEFAULT_SEED))
    spec = cam.manifest.input
    size = (spec.height, spec.width)
    path = Path(source)
    rng = np.random.default_rng(seed)
    labelled = path.suffix == ".npz"
    if path.is_dir():
        try:
            folders = class_folders(path)
        except ValueError:
            folders = []
        labelled = folders == list(cam.class_names)
        if folders and not labelled:
            log.warning(
                "%s: its folders %s are not the model's classes %s; using its images unlabelled "
                "(no accuracy)",
                path,
                folders,
                list(cam.class_names),
            )
    if labelled:
        data = load_dataset(path, size, spec.channels, cache_dir=cache_dir)
        if list(data.class_names) != list(cam.class_names):
            raise ValueError(
                f"{path}: its classes {data.class_names} are not the model's "
                f"{list(cam.class_names)}"
            )
        train_idx, val_idx = stratified_split(data.labels, val_fraction, seed)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError(f"{path}: too few images to split ({len(data)})")
        pick = np.sort(rng.choice(train_idx, size=min(images, len(train_idx)), replace=False))
        return CalibrationData(
            calibration=data.images[pick],
            evaluation=data.images[val_idx],
            labels=data.labels[val_idx],
            info={
                "source": str(source),
                "images": len(pick),
                "taken_from": f"training side of stratified_split(labels, {val_fraction}, {seed})",
                "compared_on": f"validation side ({len(val_idx)} images)",
            },
        )
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder of images, nor an .npz data set")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    decoded = []
    for file in files:
        try:
            decoded.append(resize_to(load_image(file, channels=spec.channels), *size))
        except ImageError as exc:
            log.warning("skipped %s: %s", file, exc.reason)
    if not decoded:
        raise ValueError(f"{path}: no readable images")
    stack = np.stack(decoded)
    order = rng.permutation(len(stack))
    calib, rest = order[:images], order[images:]
    held_out = len(rest) > 0
    return CalibrationData(
        calibration=stack[np.sort(calib)],
        evaluation=stack[np.sort(rest if held_out else calib)],
        labels=None,
        info={
            "source": str(source),
            "images": len(calib),
            "taken_from": f"a seeded shuffle ({seed}) of an unlabelled folder",
            "compared_on": (
                f"the other {len(rest)} images" if held_out else "the calibration images"
            ),
        },
    )


# -- the graph -------------------------------------------------------------------------------


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


# -- comparing the two models ----------------------------------------------------------------


def compare(
    reference: SceneCam,
    candidate: SceneCam,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    on: str = "",
    batch_size: int = 64,
) -> Comparison:
    """Accuracy (with labels), prediction agreement, and the Pearson correlation of each
    image's Grad-CAM map (the reference's predicted class, logit space, feature resolution)."""
    if len(images) == 0:
        raise ValueError("no images to compare on")
    gradcam = get_method("gradcam")
    ref_pred: list[np.ndarray] = []
    cand_pred: list[np.ndarray] = []
    correlations: list[float] = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        f_ref, z_ref = reference.forward(batch)
        f_cand, z_cand = candidate.forward(batch)
        targets = softmax(z_ref.astype(np.float64)).argmax(axis=1)
        maps_ref = gradcam.compute(CamInputs(f_ref, reference.head, z_ref, targets, "logit"))
        maps_cand = gradcam.compute(CamInputs(f_cand, candidate.head, z_cand, targets, "logit"))
        ref_pred.append(targets)
        cand_pred.append(softmax(z_cand.astype(np.float64)).argmax(axis=1))
        correlations.extend(pearson(a, b) for a, b in zip(maps_ref, maps_cand, strict=True))
    pred_ref, pred_cand = np.concatenate(ref_pred), np.concatenate(cand_pred)
    corr = np.asarray(correlations)
    result = Comparison(
        on=on,
        images=len(images),
        prediction_agreement=float((pred_ref == pred_cand).mean()),
        cam_correlation_mean=float(corr.mean()),
        cam_correlation_median=float(np.median(corr)),
        cam_correlation_min=float(corr.min()),
    )
    if labels is not None:
        from scenecam_edge.metrics import classification_figures

        result.float_accuracy = float((pred_ref == labels).mean())
        result.int8_accuracy = float((pred_cand == labels).mean())
        result.int8_figures = classification_figures(labels, pred_cand, candidate.class_names)
    return result


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps; two flat maps agree (1) only if they are equal."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    nx, ny = float(np.sqrt(x @ x)), float(np.sqrt(y @ y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny and np.allclose(a, b) else 0.0
    return float(x @ y / (nx * ny))


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
    original = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
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
        if description is None:
            weights = ", per-channel weights" if settings.per_channel else ""
            description = (
                f"{original.get('name', source.name)} quantised to int8 "
                f"({settings.label} QDQ{weights})"
            )
        manifest = _int8_manifest(original, staging, name or out.name, description)
        _write_json(staging / MANIFEST, manifest)
        candidate = SceneCam.load(staging, threads=threads)  # checksums and self-check
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
        if comparison.int8_figures is not None:
            manifest["evaluation"] = {
                "on": "validation split",
                **comparison.int8_figures,
                "float_accuracy": comparison.float_accuracy,
            }
        _write_json(staging / MANIFEST, manifest)
        SceneCam.load(staging, threads=threads)  # the final manifest validates too
        problems = comparison.misses(max_accuracy_drop_points, min_cam_correlation)
        if problems:
            raise TargetMissed("the int8 model was not written: " + "; ".join(problems))
    log.info("wrote %s", out)
    return QuantizeResult(out, comparison, manifest)


def _int8_manifest(
    original: dict[str, Any], staging: Path, name: str, description: str
) -> dict[str, Any]:
    manifest = json.loads(json.dumps(original))  # a deep copy
    manifest["name"] = name
    manifest["description"] = description
    manifest["files"] = {fname: sha256_file(staging / fname) for fname in original["files"]}
    manifest["producer"] = {
        **original.get("producer", {}),
        "quantized_by": f"scenecam_edge {__version__}",
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
    }
    return manifest


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
