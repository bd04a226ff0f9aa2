"""The bundle contract: ``manifest.json`` parsed and validated once into a typed record, and
written (:func:`write_manifest`, :func:`update_manifest`) by every producer the same way.

A bundle is a folder with ``model.onnx`` (input ``image``, outputs ``features`` and ``logits``),
``head.npz`` (the classifier head's weights) and ``manifest.json``. Nothing in a bundle is
trusted before it is checked, and everything is checked within limits before anything is
allocated from it: the manifest's size, nesting depth, shapes and types; each file's type,
size and sha256; that no file (the manifest included) is reached through a link that leaves
the folder (:mod:`scenecam_edge.bundle_files`); and the head's arrays, read by name without
pickle (:mod:`scenecam_edge.npz`).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle_files import open_bundle_file, read_bundle_file, sha256_file, sha256_of
from .errors import BundleError
from .fileio import write_json_atomic
from .layers import DENSE_ACTIVATIONS as DENSE_ACTIVATIONS
from .layers import FEATURES as FEATURES
from .layers import HEAD_LAYER_TYPES as HEAD_LAYER_TYPES
from .layers import INPUT_NAME as INPUT_NAME
from .layers import LOGITS as LOGITS
from .layers import Checker, ExplainedLayer, parse_extra_layers, parse_head
from .npz import read_named_arrays
from .onnx_scan import MalformedModel, external_locations

#: Limits on what a bundle may declare or hold.
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_INPUT_SIDE = 4096
MAX_CLASSES = 100_000
MAX_HEAD_BYTES = 1 << 30
MAX_MODEL_BYTES = 2 << 30  # protobuf's own limit

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    channels: int
    name: str = INPUT_NAME
    dtype: str = "uint8"
    layout: str = "NHWC"


@dataclass(frozen=True)
class Manifest:
    """A validated ``manifest.json``."""

    name: str
    class_names: tuple[str, ...]
    input: InputSpec
    features_shape: tuple[int, int, int]
    conv_layer: str
    head_file: str
    head_layers: tuple[dict[str, Any], ...]
    files: dict[str, str]
    description: str = ""
    producer: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    extra_layers: tuple[ExplainedLayer, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def trained_on_every_image(self) -> bool:
        """Trained with no validation split (``--val-split 0``): figures on its data set
        measure fit, and its accuracy is the recipe's estimate (``estimate_from``)."""
        return ((self.training or {}).get("split") or {}).get("validation") == 0

    @property
    def default_layer(self) -> ExplainedLayer:
        """The layer explained unless another is asked for: the ``features`` output."""
        gradient = (
            "vjp_graph" if any(x["type"] == "graph" for x in self.head_layers) else ("closed_form")
        )
        return ExplainedLayer(
            self.conv_layer, FEATURES, self.features_shape, self.head_file, self.head_layers,
            gradient,
        )  # fmt: skip

    @property
    def layers(self) -> tuple[ExplainedLayer, ...]:
        """Every layer the bundle explains, the default first."""
        return (self.default_layer, *self.extra_layers)

    @classmethod
    def from_dict(cls, data: object, where: str) -> Manifest:
        """Validate a decoded manifest; raise :class:`BundleError` naming the first problem."""
        m = Checker(where)
        root = m.mapping(data, "manifest")
        version = m.get(root, "schema_version", int)
        if version > SCHEMA_VERSION:
            raise BundleError(
                where,
                f"manifest schema_version {version} was written by a newer scenecam-edge; "
                f"this one reads version {SCHEMA_VERSION}",
            )
        if version < 1:
            raise BundleError(where, f"manifest schema_version {version} is not valid")
        classes = m.get(root, "class_names", list)
        if not classes or not all(isinstance(c, str) and c for c in classes):
            raise BundleError(where, "manifest class_names must be a non-empty list of names")
        if len(classes) > MAX_CLASSES:
            raise BundleError(where, f"manifest lists more than {MAX_CLASSES} classes")
        if len(set(classes)) != len(classes):
            raise BundleError(where, "manifest class_names has duplicates")

        inp = m.mapping(m.get(root, "input", dict), "input")
        spec = InputSpec(
            height=m.positive(inp, "height", MAX_INPUT_SIDE),
            width=m.positive(inp, "width", MAX_INPUT_SIDE),
            channels=m.get(inp, "channels", int),
            name=m.get(inp, "name", str),
            dtype=m.get(inp, "dtype", str),
            layout=m.get(inp, "layout", str),
        )
        if (spec.name, spec.dtype, spec.layout) != (INPUT_NAME, "uint8", "NHWC"):
            raise BundleError(where, f"input must be '{INPUT_NAME}', uint8, NHWC; got {inp}")
        if not 1 <= spec.channels <= 512:
            raise BundleError(where, f"input channels must be 1 to 512, not {spec.channels}")

        outputs = m.mapping(m.get(root, "outputs", dict), "outputs")
        feats = m.shape(m.mapping(m.get(outputs, FEATURES, dict), FEATURES), FEATURES, 4)
        logits = m.shape(m.mapping(m.get(outputs, LOGITS, dict), LOGITS), LOGITS, 2)
        if logits[1] != len(classes):
            raise BundleError(
                where, f"logits has {logits[1]} classes but class_names lists {len(classes)}"
            )

        head = m.mapping(m.get(root, "head", dict), "head")
        head_file, layers = parse_head(m, head, feats, "head")
        conv_layer = str(root.get("conv_layer", ""))
        extra = parse_extra_layers(m, root, conv_layer)

        files = m.get(root, "files", dict)
        for fname, digest in files.items():
            _check_inside(fname, where)
            if not (isinstance(digest, str) and len(digest) == 64):
                raise BundleError(where, f"files[{fname!r}] is not a sha256 hex digest")
        graphs = [layer["file"] for layer in layers if layer["type"] == "graph"]
        extra_files = [f for layer in extra for f in layer.files]
        for needed in ("model.onnx", head_file, *graphs, *extra_files):
            if needed not in files:
                raise BundleError(where, f"manifest files lacks a checksum for {needed}")

        return cls(
            name=m.get(root, "name", str),
            class_names=tuple(classes),
            input=spec,
            features_shape=(feats[1], feats[2], feats[3]),
            conv_layer=conv_layer,
            head_file=head_file,
            head_layers=layers,
            files=dict(files),
            description=str(root.get("description", "")),
            producer=m.optional_mapping(root, "producer") or {},
            training=m.optional_mapping(root, "training"),
            evaluation=m.optional_mapping(root, "evaluation"),
            extra_layers=extra,
            raw=root,
        )


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and validate ``bundle_dir/manifest.json``."""
    where = str(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(where, "not a bundle folder (no such directory)")
    if not os.path.lexists(bundle_dir / MANIFEST):
        raise BundleError(where, f"no {MANIFEST} in the bundle folder")
    raw = read_bundle_file(bundle_dir, MANIFEST, MAX_MANIFEST_BYTES)
    try:
        text = raw.decode("utf-8")
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise BundleError(
                where, f"{MANIFEST} nests {depth} levels deep, over the limit of {MAX_JSON_DEPTH}"
            )
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc)[:200] if not isinstance(exc, RecursionError) else "nested too deep"
        raise BundleError(where, f"{MANIFEST} is not valid JSON ({reason})") from None
    return Manifest.from_dict(data, where)


def write_manifest(
    bundle_dir: Path, data: Mapping[str, Any], checksum: Iterable[str] = ()
) -> dict[str, Any]:
    """Write ``data`` as ``bundle_dir/manifest.json`` atomically (a temporary file, then a
    rename): the one way export, quantize and train write a manifest. With ``checksum``,
    ``files`` first becomes the sha256 of each of those bundle files. Returns what was
    written. It is not validated here: the producers load the bundle through ``SceneCam``
    (manifest, checksums, self-check) before moving it into place."""
    written = dict(data)
    names = list(checksum)
    if names:
        written["files"] = {fname: sha256_file(bundle_dir / fname) for fname in names}
    write_json_atomic(bundle_dir / MANIFEST, written)
    return written


def update_manifest(bundle_dir: Path, **fields: Any) -> dict[str, Any]:
    """Set top-level manifest fields that no checksum covers (``training``, ``evaluation``,
    ``input``) in a bundle whose manifest validates, atomically; other fields stay as they
    were, in their order."""
    data = copy.deepcopy(read_manifest(bundle_dir).raw)
    data.update(fields)
    return write_manifest(bundle_dir, data)


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deeply a JSON text nests arrays and objects, counted without parsing it (the
    parser recurses, and a 100,000-deep document would exhaust its stack)."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check that every listed file exists inside the bundle and matches its sha256."""
    head_files = {layer.head_file for layer in manifest.layers}
    for fname, expected in manifest.files.items():
        limit = MAX_HEAD_BYTES if fname in head_files else MAX_MODEL_BYTES
        with open_bundle_file(bundle_dir, fname, limit) as fh:
            actual = sha256_of(fh)
        if actual != expected:
            raise BundleError(
                bundle_dir, f"{fname} does not match its sha256 in the manifest (file changed?)"
            )


def check_external_data(bundle_dir: Path, manifest: Manifest) -> None:
    """Refuse a graph whose tensors live in files outside the bundle, or in files the
    manifest does not checksum. Exports never write external data; this guards bundles that
    come from elsewhere."""
    try:
        locations = external_locations(read_bundle_file(bundle_dir, "model.onnx", MAX_MODEL_BYTES))
    except MalformedModel as exc:
        raise BundleError(bundle_dir, f"model.onnx is not a valid ONNX file ({exc})") from None
    for location in locations:
        p = Path(location)
        if (
            p.is_absolute()
            or ".." in p.parts
            or not (bundle_dir / p).resolve().is_relative_to(bundle_dir.resolve())
        ):
            raise BundleError(
                bundle_dir, f"model.onnx refers to external data outside the bundle ({location!r})"
            )
        if location not in manifest.files:
            raise BundleError(
                bundle_dir,
                f"model.onnx refers to external data {location!r} that the manifest does not checksum",
            )


def head_array_names(layer: ExplainedLayer) -> set[str]:
    """The arrays a layer's head names (the only ones read)."""
    return {
        spec[key]
        for spec in layer.head_layers
        for key, kind in HEAD_LAYER_TYPES[spec["type"]].items()
        if kind is str and key not in ("activation", "file")
    }


def load_head_arrays(
    bundle_dir: Path, manifest: Manifest, layer: ExplainedLayer | None = None
) -> dict[str, np.ndarray]:
    """A head's arrays (the default layer's unless ``layer`` is given), by name, within
    limits and without pickle."""
    layer = layer or manifest.default_layer
    with open_bundle_file(bundle_dir, layer.head_file, MAX_HEAD_BYTES) as fh:
        return read_named_arrays(fh, head_array_names(layer), str(bundle_dir), layer.head_file)


def _check_inside(fname: str, where: str) -> None:
    p = Path(fname)
    if p.is_absolute() or ".." in p.parts or fname != p.as_posix() or len(p.parts) != 1:
        raise BundleError(where, f"file name {fname!r} must be a plain name inside the bundle")
