"""The classifier head: forward, and the exact gradient without autodiff.

The ONNX graph stops at two outputs, ``features`` A and ``logits`` z. Grad-CAM needs
dz/dA. Usually the head that maps A to z is small (pooling, flatten, dense, normalisation,
activations), so the bundle carries its layers and weights and numpy runs them forward and
backward (:mod:`scenecam_edge.head_layers`). For a linear head, dz/dA is a constant Jacobian
J of shape (C, h, w, K); it is built once at load, and every gradient afterwards is one
contraction.

When the explained layer sits further up (convolutions and residual adds between it and
the logits), the bundle carries a second ONNX graph instead, ``head.onnx``: inputs
``features`` and ``cotangent``, outputs ``logits`` and ``gradient`` (the vector-Jacobian
product), built at export time. :class:`GraphVJP` runs it, one image per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import BundleError
from .head_layers import (
    ACTIVATIONS,
    Activation,
    ChannelAffine,
    Dense,
    GlobalPooling,
    Identity,
    LayerNorm,
    Pooling,
    Reshape,
)

#: Names of the VJP graph's inputs and outputs.
VJP_INPUTS = ("features", "cotangent")
VJP_OUTPUTS = ("logits", "gradient")


class Layer(Protocol):
    @property
    def linear(self) -> bool:
        """True when the layer is affine (its Jacobian does not depend on its input)."""
        ...

    def forward(self, x: np.ndarray) -> np.ndarray: ...

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """d(loss)/dx given the layer's input x, output y and d(loss)/dy."""
        ...


class GraphVJP:
    """The head as an ONNX graph (features, cotangent) -> (logits, gradient), for Grad-CAM
    at a layer followed by more than a closed-form head. The graph's shapes are static
    (batch 1): that is what lets TensorFlow's gradient fold into convertible operators."""

    linear = False

    def __init__(self, session: Any) -> None:
        self._session = session
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if sorted(inputs) != sorted(VJP_INPUTS) or sorted(outputs) != sorted(VJP_OUTPUTS):
            raise ValueError(
                f"head graph must map {VJP_INPUTS} to {VJP_OUTPUTS}, has {inputs} -> {outputs}"
            )
        self.num_classes = int(
            next(i for i in session.get_inputs() if i.name == "cotangent").shape[1]
        )
        declared = next(i for i in session.get_inputs() if i.name == "features").shape
        self.feature_shape = tuple(declared[1:])

    def _check(self, x: np.ndarray) -> None:
        if tuple(x.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"the head graph takes features of shape {list(self.feature_shape)}, "
                f"not {list(x.shape[1:])}"
            )

    def vjp(self, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, C), gradient (N, h, w, K)) for features x and cotangents (N, C)."""
        self._check(x)
        logits, grads = [], []
        for a, v in zip(x, cotangent, strict=True):
            z, g = self._session.run(
                list(VJP_OUTPUTS),
                {
                    "features": np.ascontiguousarray(a[None], np.float32),
                    "cotangent": np.asarray(v[None], np.float32),
                },
            )
            logits.append(z[0])
            grads.append(g[0])
        return np.stack(logits), np.stack(grads)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.vjp(x, np.zeros((len(x), self.num_classes), np.float32))[0]

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return self.vjp(x, dy)[1]


class Head:
    """The layers from ``features`` to ``logits``, runnable forward and backward in numpy."""

    def __init__(self, layers: Sequence[Layer], feature_shape: tuple[int, int, int]) -> None:
        self.layers = tuple(layers)
        self.feature_shape = feature_shape
        self.is_linear = all(layer.linear for layer in self.layers)
        self.num_classes = int(self._run(np.zeros((1, *feature_shape), np.float64))[-1].shape[1])
        self.jacobian: np.ndarray | None = None  # (C, h, w, K), float32, linear heads only
        if self.is_linear:
            eye = np.eye(self.num_classes, dtype=np.float64)
            zeros = np.zeros((self.num_classes, *feature_shape), np.float64)
            self.jacobian = self._backward(self._run(zeros), eye).astype(np.float32)
            self._bias = self._run(zeros[:1])[-1][0]
            self._jacobian_flat = self.jacobian.reshape(self.num_classes, -1)
            self._pooled_jacobian = self.jacobian.mean(axis=(1, 2))  # (C, K)

    @classmethod
    def from_manifest(
        cls,
        layers: Sequence[dict[str, Any]],
        arrays: dict[str, np.ndarray],
        feature_shape: tuple[int, int, int],
        where: str,
        open_graph: Callable[[str], Any] | None = None,
    ) -> Head:
        """Build the head from the manifest's layer list; ``open_graph(file)`` gives an
        onnxruntime session for a ``graph`` layer (the runtime passes its one session
        factory)."""
        built: list[Layer] = []
        try:
            for i, spec in enumerate(layers):
                built.append(_layer(spec, arrays, where, i, open_graph))
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(where, f"head layer {i}: {exc}") from None
        try:
            return cls(built, feature_shape)
        except ValueError as exc:  # shapes that do not chain, e.g. a kernel of the wrong size
            raise BundleError(where, f"head layers do not fit the features shape ({exc})") from None

    def logits(self, features: np.ndarray) -> np.ndarray:
        """z for features of shape (N, h, w, K)."""
        if self.jacobian is not None:
            return np.einsum("nhwk,chwk->nc", features, self.jacobian) + self._bias
        return self._run(features)[-1]

    def vjp(self, features: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """sum_c cotangent[n, c] * dz_c/dA for each image: shape (N, h, w, K)."""
        cotangent = cotangent.astype(np.float32, copy=False)
        if self.jacobian is not None:
            return (cotangent @ self._jacobian_flat).reshape(len(cotangent), *self.feature_shape)
        if len(self.layers) == 1 and isinstance(self.layers[0], GraphVJP):
            return self.layers[0].vjp(features, cotangent)[1]
        return self._backward(self._run(features), cotangent).astype(np.float32)

    def pooled_vjp(self, features: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """:meth:`vjp` averaged over the spatial positions, (N, K), without the full map for
        linear heads."""
        if self.jacobian is not None:
            return cotangent.astype(np.float32, copy=False) @ self._pooled_jacobian
        return self.vjp(features, cotangent).mean(axis=(1, 2))

    def _run(self, features: np.ndarray) -> list[np.ndarray]:
        values = [features]
        for layer in self.layers:
            values.append(layer.forward(values[-1]))
        return values

    def _backward(self, values: list[np.ndarray], cotangent: np.ndarray) -> np.ndarray:
        grad = cotangent
        for layer, x, y in zip(
            reversed(self.layers), reversed(values[:-1]), reversed(values[1:]), strict=True
        ):
            grad = layer.backward(x, y, grad)
        return grad


Build = Callable[[dict[str, Any], dict[str, np.ndarray], str, Callable[[str], Any] | None], Layer]


@dataclass(frozen=True)
class LayerType:
    """One head layer type of the manifest: the keys it needs with their JSON types (the
    manifest's validation checks them, :mod:`scenecam_edge.layers`) and how the runtime
    builds it from its entry and the head's arrays."""

    fields: dict[str, type | tuple[type, ...]]
    build: Build


def _global_pooling(kind: str) -> Build:
    return lambda spec, arrays, where, graph: GlobalPooling(kind, bool(spec.get("keepdims")))


def _pooling(kind: str) -> Build:
    def build(spec: dict[str, Any], arrays: Any, where: str, graph: Any) -> Layer:
        padding = spec.get("padding", "valid")
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', not {padding!r}")
        return Pooling(kind, _pair(spec["pool_size"]), _pair(spec["strides"]), padding)

    return build


def _reshape(spec: dict[str, Any], arrays: Any, where: str, graph: Any) -> Layer:
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"reshape shape must be a list of positive ints, not {shape!r}")
    return Reshape(tuple(shape))


def _batch_norm(
    spec: dict[str, Any], arrays: dict[str, np.ndarray], where: str, graph: Any
) -> Layer:
    scale = _array(arrays, spec["scale"], where, ndim=1)
    offset = _array(arrays, spec["offset"], where, ndim=1)
    if scale.shape != offset.shape:
        raise ValueError("scale and offset sizes differ")
    return ChannelAffine(scale, offset)


def _layer_norm(
    spec: dict[str, Any], arrays: dict[str, np.ndarray], where: str, graph: Any
) -> Layer:
    gamma = _array(arrays, spec["gamma"], where, ndim=1)
    beta = _array(arrays, spec["beta"], where, ndim=1)
    if gamma.shape != beta.shape:
        raise ValueError("gamma and beta sizes differ")
    return LayerNorm(gamma, beta, float(spec["epsilon"]))


def _dense(spec: dict[str, Any], arrays: dict[str, np.ndarray], where: str, graph: Any) -> Layer:
    kernel = _array(arrays, spec["kernel"], where, ndim=2)
    bias = _array(arrays, spec["bias"], where, ndim=1)
    if bias.shape[0] != kernel.shape[1]:
        raise ValueError("kernel and bias sizes differ")
    return Dense(kernel, bias, _activation({"function": spec["activation"], **spec}))


def _graph(spec: dict[str, Any], arrays: Any, where: str, open_graph: Any) -> Layer:
    if open_graph is None:
        raise ValueError("a graph head needs an onnxruntime session factory")
    return GraphVJP(open_graph(spec["file"]))


_WINDOW: dict[str, type | tuple[type, ...]] = {"pool_size": (int, list), "strides": (int, list)}

#: Every head layer type, in one place: its manifest keys and its builder. The manifest's
#: validation (``layers.HEAD_LAYER_TYPES``), the runtime and the export (which checks each
#: layer it writes against this table) all read it. Whether a head is linear is computed
#: from the built layers (``Layer.linear``); manifests once carried a hand-kept
#: ``head.linear`` flag, which still loads and is ignored.
HEAD_LAYERS: dict[str, LayerType] = {
    "global_average_pooling": LayerType({}, _global_pooling("average")),
    "global_max_pooling": LayerType({}, _global_pooling("max")),
    "average_pooling": LayerType(_WINDOW, _pooling("average")),
    "max_pooling": LayerType(_WINDOW, _pooling("max")),
    "flatten": LayerType({}, lambda spec, arrays, where, graph: Reshape()),
    "reshape": LayerType({"shape": list}, _reshape),
    "dropout": LayerType({}, lambda spec, arrays, where, graph: Identity()),
    "dense": LayerType({"kernel": str, "bias": str, "activation": str}, _dense),
    "batch_normalization": LayerType({"scale": str, "offset": str}, _batch_norm),
    "layer_normalization": LayerType(
        {"gamma": str, "beta": str, "epsilon": (int, float)}, _layer_norm
    ),
    "relu": LayerType({}, lambda spec, arrays, where, graph: Activation("relu")),
    "activation": LayerType({"function": str}, lambda spec, *rest: _activation(spec)),
    # The layers after the explained one as a second ONNX graph (features, cotangent) ->
    # (logits, gradient); the file must be listed in ``files``.
    "graph": LayerType({"file": str}, _graph),
}


def _layer(
    spec: dict[str, Any],
    arrays: dict[str, np.ndarray],
    where: str,
    i: int,
    open_graph: Callable[[str], Any] | None,
) -> Layer:
    kind = spec["type"]
    if kind not in HEAD_LAYERS:  # manifest validation rejects unknown types first
        raise ValueError(f"unknown type {kind!r}")
    return HEAD_LAYERS[kind].build(spec, arrays, where, open_graph)


def _activation(spec: dict[str, Any]) -> Activation:
    name = spec["function"]
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r} (supported: {', '.join(ACTIVATIONS)})")
    max_value = spec.get("max_value")
    return Activation(
        name,
        max_value=None if max_value is None else float(max_value),
        negative_slope=float(spec.get("negative_slope", 0.0)),
        threshold=float(spec.get("threshold", 0.0)),
    )


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise BundleError("head", f"expected an int or a pair of ints, got {value!r}")


def _array(arrays: dict[str, np.ndarray], key: str, where: str, ndim: int) -> np.ndarray:
    if key not in arrays:
        raise BundleError(where, f"head arrays lack {key!r}")
    arr = arrays[key]
    if arr.ndim != ndim or arr.dtype.kind != "f":
        raise BundleError(where, f"head array {key!r} must be a {ndim}-D float array")
    return arr.astype(np.float64)
