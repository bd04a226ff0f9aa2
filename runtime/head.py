"""The classifier head in numpy: forward, and the exact gradient without autodiff.

The ONNX graph stops at two outputs, ``features`` A and ``logits`` z. Grad-CAM needs
dz/dA. The head that maps A to z is small (pooling, flatten, dense), so the bundle carries its
layers and weights and this module runs them forward and backward.

For a linear head (no nonlinear activation), dz/dA is a constant Jacobian J of shape
(C, h, w, K); it is built once at load, and every gradient afterwards is one contraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import BundleError


class Layer(Protocol):
    @property
    def linear(self) -> bool:
        """True when the layer is affine (its Jacobian does not depend on its input)."""
        ...

    def forward(self, x: np.ndarray) -> np.ndarray: ...

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """d(loss)/dx given the layer's input x, output y and d(loss)/dy."""
        ...


@dataclass(frozen=True)
class GlobalAveragePooling:
    linear = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(1, 2))

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        h, w = x.shape[1:3]
        return np.broadcast_to(dy[:, None, None, :] / (h * w), x.shape).copy()


@dataclass(frozen=True)
class AveragePooling:
    """Average pooling, 'valid' padding, NHWC."""

    pool: tuple[int, int]
    strides: tuple[int, int]
    linear = True

    def _windows(self, h: int, w: int) -> tuple[int, int]:
        return (h - self.pool[0]) // self.strides[0] + 1, (w - self.pool[1]) // self.strides[1] + 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, h, w, k = x.shape
        oh, ow = self._windows(h, w)
        out = np.empty((n, oh, ow, k), dtype=x.dtype)
        ph, pw = self.pool
        sh, sw = self.strides
        for i in range(oh):
            for j in range(ow):
                out[:, i, j] = x[:, i * sh : i * sh + ph, j * sw : j * sw + pw].mean(axis=(1, 2))
        return out

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        oh, ow = dy.shape[1:3]
        dx = np.zeros(x.shape, dtype=dy.dtype)
        ph, pw = self.pool
        sh, sw = self.strides
        share = dy / (ph * pw)
        for i in range(oh):
            for j in range(ow):
                dx[:, i * sh : i * sh + ph, j * sw : j * sw + pw] += share[:, i, j, None, None, :]
        return dx


@dataclass(frozen=True)
class Flatten:
    linear = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], -1)

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return dy.reshape(x.shape)


@dataclass(frozen=True)
class Identity:
    """Dropout at inference time."""

    linear = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return dy


@dataclass(frozen=True)
class Dense:
    kernel: np.ndarray  # (in, out)
    bias: np.ndarray  # (out,)
    activation: str  # "linear" or "relu"

    @property
    def linear(self) -> bool:
        return self.activation == "linear"

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.kernel + self.bias
        return np.maximum(y, 0) if self.activation == "relu" else y

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        if self.activation == "relu":
            dy = dy * (y > 0)
        return dy @ self.kernel.T


@dataclass(frozen=True)
class ChannelAffine:
    """Batch normalisation in inference mode, folded: y = x * scale + offset on the last axis."""

    scale: np.ndarray  # (K,)
    offset: np.ndarray  # (K,)
    linear = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale + self.offset

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return dy * self.scale


@dataclass(frozen=True)
class ReLU:
    linear = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return dy * (x > 0)


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
    ) -> Head:
        built: list[Layer] = []
        for i, spec in enumerate(layers):
            kind = spec["type"]
            if kind == "global_average_pooling":
                built.append(GlobalAveragePooling())
            elif kind == "average_pooling":
                built.append(AveragePooling(_pair(spec["pool_size"]), _pair(spec["strides"])))
            elif kind == "flatten":
                built.append(Flatten())
            elif kind == "dropout":
                built.append(Identity())
            elif kind == "relu":
                built.append(ReLU())
            elif kind == "batch_normalization":
                scale = _array(arrays, spec["scale"], where, ndim=1)
                offset = _array(arrays, spec["offset"], where, ndim=1)
                if scale.shape != offset.shape:
                    raise BundleError(where, f"head layer {i}: scale and offset sizes differ")
                built.append(ChannelAffine(scale, offset))
            elif kind == "dense":
                kernel = _array(arrays, spec["kernel"], where, ndim=2)
                bias = _array(arrays, spec["bias"], where, ndim=1)
                if bias.shape[0] != kernel.shape[1]:
                    raise BundleError(where, f"head layer {i}: kernel and bias sizes differ")
                built.append(Dense(kernel, bias, spec["activation"]))
            else:  # Manifest validation rejects unknown types first; this guards the mapping.
                raise BundleError(where, f"head layer {i}: unknown type {kind!r}")
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
