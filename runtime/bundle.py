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
import math
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
from .head_layers import ACTIVATIONS
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
INPUT_NAME = "image"
FEATURES = "features"
LOGITS = "logits"

#: Head layer types the runtime can run forward and backward, with the keys each one needs
#: and their JSON types.
HEAD_LAYER_TYPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "global_average_pooling": {},
    "global_max_pooling": {},
    "average_pooling": {"pool_size": (int, list), "strides": (int, list)},
    "max_pooling": {"pool_size": (int, list), "strides": (int, list)},
    "flatten": {},
    "reshape": {"shape": list},
    "dropout": {},
    "dense": {"kernel": str, "bias": str, "activation": str},
    "batch_normalization": {"scale": str, "offset": str},
    "layer_normalization": {"gamma": str, "beta": str, "epsilon": (int, float)},
    "relu": {},
    "activation": {"function": str},
    # The layers after the explained one as a second ONNX graph (features, cotangent) ->
    # (logits, gradient); the file must be listed in ``files``.
    "graph": {"file": str},
}
DENSE_ACTIVATIONS = ACTIVATIONS


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
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_dict(cls, data: object, where: str) -> Manifest:
        """Validate a decoded manifest; raise :class:`BundleError` naming the first problem."""
        m = _Checker(where)
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
        layers = m.get(head, "layers", list)
        if not layers:
            raise BundleError(where, "head.layers is empty")
        for i, layer in enumerate(layers):
            layer = m.mapping(layer, f"head.layers[{i}]")
            kind = layer.get("type")
            if not isinstance(kind, str) or kind not in HEAD_LAYER_TYPES:
                raise BundleError(where, f"head.layers[{i}] has unknown type {kind!r}")
            for key, expected in HEAD_LAYER_TYPES[kind].items():
                if key not in layer:
                    raise BundleError(where, f"head.layers[{i}] ({kind}) lacks '{key}'")
                if not isinstance(layer[key], expected) or isinstance(layer[key], bool):
                    raise BundleError(where, f"head.layers[{i}] ({kind}) has a malformed '{key}'")
            if kind in ("average_pooling", "max_pooling"):
                for key in ("pool_size", "strides"):
                    _window(layer[key], f"head.layers[{i}].{key}", feats[1:3], where)
            function = layer.get("activation" if kind == "dense" else "function")
            if kind in ("dense", "activation") and function not in DENSE_ACTIVATIONS:
                raise BundleError(
                    where, f"head.layers[{i}] has unsupported activation {function!r}"
                )

        files = m.get(root, "files", dict)
        for fname, digest in files.items():
            _check_inside(fname, where)
            if not (isinstance(digest, str) and len(digest) == 64):
                raise BundleError(where, f"files[{fname!r}] is not a sha256 hex digest")
        head_file = m.get(head, "file", str)
        graphs = [layer["file"] for layer in layers if layer["type"] == "graph"]
        for needed in ("model.onnx", head_file, *graphs):
            if needed not in files:
                raise BundleError(where, f"manifest files lacks a checksum for {needed}")

        return cls(
            name=m.get(root, "name", str),
            class_names=tuple(classes),
            input=spec,
            features_shape=(feats[1], feats[2], feats[3]),
            conv_layer=str(root.get("conv_layer", "")),
            head_file=head_file,
            head_layers=tuple(layers),
            files=dict(files),
            description=str(root.get("description", "")),
            producer=m.optional_mapping(root, "producer") or {},
            training=m.optional_mapping(root, "training"),
            evaluation=m.optional_mapping(root, "evaluation"),
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
    for fname, expected in manifest.files.items():
        limit = MAX_HEAD_BYTES if fname == manifest.head_file else MAX_MODEL_BYTES
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


def head_array_names(manifest: Manifest) -> set[str]:
    """The arrays the manifest's head layers name (the only ones read)."""
    return {
        layer[key]
        for layer in manifest.head_layers
        for key, kind in HEAD_LAYER_TYPES[layer["type"]].items()
        if kind is str and key != "activation"
    }


def load_head_arrays(bundle_dir: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """The head's arrays, by name, within limits and without pickle."""
    with open_bundle_file(bundle_dir, manifest.head_file, MAX_HEAD_BYTES) as fh:
        return read_named_arrays(
            fh, head_array_names(manifest), str(bundle_dir), manifest.head_file
        )


def _window(value: object, what: str, features: list[int], where: str) -> None:
    """A pooling size or stride: a positive int or pair, no larger than the features."""
    pair = [value, value] if isinstance(value, int) else value
    if not (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    ):
        raise BundleError(where, f"manifest {what} must be an int or a pair of ints")
    if not all(1 <= v <= side for v, side in zip(pair, features, strict=True)):
        raise BundleError(
            where, f"manifest {what} {value} must be between 1 and the features' size {features}"
        )


def _check_inside(fname: str, where: str) -> None:
    p = Path(fname)
    if p.is_absolute() or ".." in p.parts or fname != p.as_posix() or len(p.parts) != 1:
        raise BundleError(where, f"file name {fname!r} must be a plain name inside the bundle")


class _Checker:
    """Small helpers that turn type problems into BundleErrors naming the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def mapping(self, value: object, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise BundleError(self.where, f"manifest {what} must be an object")
        return value

    def get(self, obj: dict[str, Any], key: str, kind: type) -> Any:
        if key not in obj:
            raise BundleError(self.where, f"manifest lacks '{key}'")
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BundleError(
                self.where, f"manifest '{key}' must be {kind.__name__}, not {type(value).__name__}"
            )
        return value

    def optional_mapping(self, obj: dict[str, Any], key: str) -> dict[str, Any] | None:
        value = obj.get(key)
        if value is not None and not isinstance(value, dict):
            raise BundleError(self.where, f"manifest '{key}' must be an object or null")
        return value

    def positive(self, obj: dict[str, Any], key: str, limit: int) -> int:
        value: int = self.get(obj, key, int)
        if not 1 <= value <= limit:
            raise BundleError(
                self.where, f"manifest '{key}' must be between 1 and {limit}, not {value}"
            )
        return value

    def shape(self, obj: dict[str, Any], what: str, rank: int) -> list[int]:
        shape = self.get(obj, "shape", list)
        ok = len(shape) == rank and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape[1:]
        )
        if not ok or math.prod(shape[1:]) > 1 << 28:
            raise BundleError(
                self.where, f"outputs.{what}.shape must be [null, ...] of rank {rank}"
            )
        return [0, *shape[1:]]
