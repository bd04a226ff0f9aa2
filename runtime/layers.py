"""The explained layers a bundle offers, as validated records.

Every bundle explains its default layer: the ``features`` output, ``conv_layer`` and
``head`` in the manifest. A bundle may offer more under ``extra_layers`` (``export
--extra-layer``), each one another output of ``model.onnx`` with its own head::

    {"name": "stage3_block2_out", "output": "features_1", "shape": [null, 10, 10, 256],
     "head": {"file": "head_1.npz", "layers": [{"type": "graph", "file": "head_1.onnx"}]},
     "gradient": "vjp_graph"}

``gradient`` says how d logits / d activations is computed: ``closed_form`` (the head's
layers, in numpy) or ``vjp_graph`` (a second ONNX graph). ``straight_through`` (set by
``quantize``) marks a layer whose later layers were quantised: its gradient is the float
model's at the int8 activations (a straight-through estimate; an int8 graph has no
gradient of its own), and the load-time self-check allows the quantisation's difference
between the two sets of logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BundleError
from .head import HEAD_LAYERS
from .head_layers import ACTIVATIONS

FEATURES = "features"
LOGITS = "logits"
INPUT_NAME = "image"
MAX_EXTRA_LAYERS = 16
GRADIENTS = ("closed_form", "vjp_graph")

#: Head layer types the runtime can run forward and backward, with the keys each one needs
#: and their JSON types: from the one registry, ``head.HEAD_LAYERS``.
HEAD_LAYER_TYPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    name: kind.fields for name, kind in HEAD_LAYERS.items()
}
DENSE_ACTIVATIONS = ACTIVATIONS


@dataclass(frozen=True)
class ExplainedLayer:
    """One layer a bundle can explain: its graph output, activations' shape and head."""

    name: str
    output: str
    shape: tuple[int, int, int]
    head_file: str
    head_layers: tuple[dict[str, Any], ...]
    gradient: str = "closed_form"
    straight_through: bool = False

    @property
    def files(self) -> list[str]:
        """The head's files: its arrays and any VJP graph."""
        graphs = [layer["file"] for layer in self.head_layers if layer["type"] == "graph"]
        return [self.head_file, *graphs]

    @property
    def map_size(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"


class Checker:
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
        import math

        shape = self.get(obj, "shape", list)
        ok = len(shape) == rank and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape[1:]
        )
        if not ok or math.prod(shape[1:]) > 1 << 28:
            raise BundleError(
                self.where, f"outputs.{what}.shape must be [null, ...] of rank {rank}"
            )
        return [0, *shape[1:]]


def parse_head(
    m: Checker, head: dict[str, Any], feats: list[int], what: str
) -> tuple[str, tuple[dict[str, Any], ...]]:
    """A head block's arrays file and layers, each layer checked for its keys and types."""
    layers = m.get(head, "layers", list)
    if not layers:
        raise BundleError(m.where, f"{what}.layers is empty")
    for i, layer in enumerate(layers):
        layer = m.mapping(layer, f"{what}.layers[{i}]")
        kind = layer.get("type")
        if not isinstance(kind, str) or kind not in HEAD_LAYER_TYPES:
            raise BundleError(m.where, f"{what}.layers[{i}] has unknown type {kind!r}")
        for key, expected in HEAD_LAYER_TYPES[kind].items():
            if key not in layer:
                raise BundleError(m.where, f"{what}.layers[{i}] ({kind}) lacks '{key}'")
            if not isinstance(layer[key], expected) or isinstance(layer[key], bool):
                raise BundleError(m.where, f"{what}.layers[{i}] ({kind}) has a malformed '{key}'")
        if kind in ("average_pooling", "max_pooling"):
            for key in ("pool_size", "strides"):
                window(layer[key], f"{what}.layers[{i}].{key}", feats[1:3], m.where)
        function = layer.get("activation" if kind == "dense" else "function")
        if kind in ("dense", "activation") and function not in DENSE_ACTIVATIONS:
            raise BundleError(
                m.where, f"{what}.layers[{i}] has unsupported activation {function!r}"
            )
    return m.get(head, "file", str), tuple(layers)


def parse_extra_layers(
    m: Checker, root: dict[str, Any], default: str
) -> tuple[ExplainedLayer, ...]:
    """The manifest's ``extra_layers`` (absent: none), each checked like the default head,
    with names and outputs unique and apart from the default's."""
    entries = root.get("extra_layers", [])
    if not isinstance(entries, list):
        raise BundleError(m.where, "manifest 'extra_layers' must be a list")
    if len(entries) > MAX_EXTRA_LAYERS:
        raise BundleError(m.where, f"manifest lists more than {MAX_EXTRA_LAYERS} extra layers")
    names, outputs = {default}, {FEATURES, LOGITS, INPUT_NAME}
    layers: list[ExplainedLayer] = []
    for i, raw in enumerate(entries):
        what = f"extra_layers[{i}]"
        entry = m.mapping(raw, what)
        name, output = m.get(entry, "name", str), m.get(entry, "output", str)
        if not name or name in names:
            raise BundleError(m.where, f"{what} repeats the layer name {name!r}")
        if not output or output in outputs:
            raise BundleError(m.where, f"{what} repeats the graph output {output!r}")
        shape = m.shape(entry, f"{what}", 4)
        head_file, head_layers = parse_head(
            m, m.mapping(m.get(entry, "head", dict), f"{what}.head"), shape, f"{what}.head"
        )
        gradient = entry.get("gradient", "closed_form")
        if gradient not in GRADIENTS:
            raise BundleError(m.where, f"{what}.gradient must be one of {GRADIENTS}")
        straight = entry.get("straight_through", False)
        if not isinstance(straight, bool):
            raise BundleError(m.where, f"{what}.straight_through must be true or false")
        names.add(name)
        outputs.add(output)
        layers.append(
            ExplainedLayer(
                name,
                output,
                (shape[1], shape[2], shape[3]),
                head_file,
                head_layers,
                gradient,
                straight,
            )
        )
    return tuple(layers)


def window(value: object, what: str, features: list[int], where: str) -> None:
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
