"""The bundle contract: ``manifest.json`` parsed and validated once into a typed record.

A bundle is a folder with ``model.onnx`` (input ``image``, outputs ``features`` and ``logits``),
``head.npz`` (the classifier head's weights) and ``manifest.json``. Nothing in a bundle is
trusted before it is checked: the manifest's shape and types, each file's sha256, that files
stay inside the folder, and that arrays load without pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError
from .head_layers import ACTIVATIONS
from .onnx_scan import MalformedModel, external_locations

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
        if len(set(classes)) != len(classes):
            raise BundleError(where, "manifest class_names has duplicates")

        inp = m.mapping(m.get(root, "input", dict), "input")
        spec = InputSpec(
            height=m.positive(inp, "height"),
            width=m.positive(inp, "width"),
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
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(where, f"no {MANIFEST} in the bundle folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(where, f"{MANIFEST} is not valid JSON ({exc})") from None
    return Manifest.from_dict(data, where)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check that every listed file exists inside the bundle and matches its sha256."""
    root = bundle_dir.resolve()
    for fname, expected in manifest.files.items():
        path = (bundle_dir / fname).resolve()
        if not path.is_relative_to(root):
            raise BundleError(bundle_dir, f"{fname} points outside the bundle folder")
        if not path.is_file():
            raise BundleError(bundle_dir, f"{fname} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                bundle_dir, f"{fname} does not match its sha256 in the manifest (file changed?)"
            )


def check_external_data(bundle_dir: Path, manifest: Manifest) -> None:
    """Refuse a graph whose tensors live in files outside the bundle, or in files the
    manifest does not checksum. Exports never write external data; this guards bundles that
    come from elsewhere."""
    try:
        locations = external_locations((bundle_dir / "model.onnx").read_bytes())
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


def load_arrays(path: Path, where: str | Path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` without ever unpickling."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        raise BundleError(where, f"{path.name} cannot be read without pickle ({exc})") from None
    except (OSError, EOFError) as exc:
        raise BundleError(where, f"{path.name} is not a valid .npz ({exc})") from None


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

    def positive(self, obj: dict[str, Any], key: str) -> int:
        value: int = self.get(obj, key, int)
        if value < 1:
            raise BundleError(self.where, f"manifest '{key}' must be positive, not {value}")
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
