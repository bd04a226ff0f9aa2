"""The head's layers in numpy, each with its exact backward pass.

A layer takes (N, ...) arrays. ``backward(x, y, dy)`` returns d(loss)/dx from the layer's
input x, its output y and d(loss)/dy. Ties (max pooling over equal values) follow
TensorFlow's own gradients: a window's gradient goes to its first maximum, a global
maximum's is shared equally between the tied positions.

Matrix products go through :func:`matmul`, numpy's own einsum loop rather than BLAS: the
head's matrices are small, and OpenBLAS's thread pool then costs more than it saves and
competes with onnxruntime's threads (see docs/export.md, "Nonlinear heads").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Keras activation names the head runs, after Keras's own aliases (swish is silu,
#: hard_swish is hard_silu).
ACTIVATIONS = (
    "linear",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "sigmoid",
    "hard_sigmoid",
    "tanh",
    "silu",
    "hard_silu",
    "gelu",
    "gelu_approximate",
    "softplus",
    "softmax",
)
_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


def matmul(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """x (..., i) @ kernel (i, j) on the calling thread (no BLAS thread pool). Both in the
    kernel's dtype: einsum's mixed-dtype path is 20x slower."""
    return np.einsum("...i,ij->...j", x.astype(kernel.dtype, copy=False), kernel, optimize=False)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function (Abramowitz and Stegun 7.1.26, |error| < 1.5e-7); numpy has none."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh_inner(x: np.ndarray) -> np.ndarray:
    return _SQRT_2_OVER_PI * (x + 0.044715 * x**3)


# name -> (forward(x), derivative(x, y)) for the elementwise ones; softmax is separate.
_ELEMENTWISE: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "linear": (lambda x: x, lambda x, y: np.ones_like(x)),
    "sigmoid": (_sigmoid, lambda x, y: y * (1.0 - y)),
    "hard_sigmoid": (
        lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
        lambda x, y: ((x > -3.0) & (x < 3.0)) / 6.0,
    ),
    "tanh": (np.tanh, lambda x, y: 1.0 - y * y),
    "silu": (lambda x: x * _sigmoid(x), lambda x, y: (s := _sigmoid(x)) * (1.0 + x * (1.0 - s))),
    "hard_silu": (
        lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
        lambda x, y: np.clip(x / 6.0 + 0.5, 0.0, 1.0) + x * ((x > -3.0) & (x < 3.0)) / 6.0,
    ),
    "gelu": (
        lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),
        lambda x, y: (
            0.5 * (1.0 + erf(x / math.sqrt(2.0)))
            + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        ),
    ),
    "gelu_approximate": (
        lambda x: 0.5 * x * (1.0 + np.tanh(_gelu_tanh_inner(x))),
        lambda x, y: (
            0.5 * (1.0 + (t := np.tanh(_gelu_tanh_inner(x))))
            + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        ),
    ),
    "softplus": (
        lambda x: np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0),
        lambda x, y: _sigmoid(x),
    ),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(x)), lambda x, y: np.where(x > 0, 1.0, y + 1.0)),
    "selu": (
        lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(x)),
        lambda x, y: np.where(x > 0, _SELU_SCALE, y + _SELU_SCALE * _SELU_ALPHA),
    ),
}


@dataclass(frozen=True)
class Activation:
    """A Keras activation on the last axis. ``relu`` takes Keras ReLU's options."""

    function: str
    max_value: float | None = None
    negative_slope: float = 0.0
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.function not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.function!r}")

    @property
    def linear(self) -> bool:
        return self.function == "linear"

    def _relu_bounds(self) -> tuple[float, float | None, float]:
        if self.function == "relu6":
            return 0.0, 6.0, 0.0
        if self.function == "leaky_relu":
            return 0.0, None, self.negative_slope or 0.2
        return self.threshold, self.max_value, self.negative_slope

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.function in ("relu", "relu6", "leaky_relu"):
            threshold, top, slope = self._relu_bounds()
            y = np.where(x > threshold, x, slope * (x - threshold) if slope else 0.0)
            return np.minimum(y, top) if top is not None else y
        if self.function == "softmax":
            return _softmax(x)
        return _ELEMENTWISE[self.function][0](x)

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        if self.function in ("relu", "relu6", "leaky_relu"):
            threshold, top, slope = self._relu_bounds()
            slope_below = slope if slope else 0.0
            d = np.where(x > threshold, 1.0, slope_below)
            if top is not None:
                d = np.where(x < top, d, 0.0)
            return dy * d
        if self.function == "softmax":
            return y * (dy - (dy * y).sum(axis=-1, keepdims=True))
        return dy * _ELEMENTWISE[self.function][1](x, y)


@dataclass(frozen=True)
class GlobalPooling:
    """Global average or max pooling over (h, w), NHWC."""

    kind: str  # "average" or "max"
    keepdims: bool = False

    @property
    def linear(self) -> bool:
        return self.kind == "average"

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "average":
            return x.mean(axis=(1, 2), keepdims=self.keepdims)
        return x.max(axis=(1, 2), keepdims=self.keepdims)

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        dy4 = dy.reshape(x.shape[0], 1, 1, x.shape[3])
        if self.kind == "average":
            return np.broadcast_to(dy4 / (x.shape[1] * x.shape[2]), x.shape).copy()
        hits = x == x.max(axis=(1, 2), keepdims=True)
        return hits * (dy4 / hits.sum(axis=(1, 2), keepdims=True))


@dataclass(frozen=True)
class Pooling:
    """Windowed average or max pooling, NHWC, 'valid' or 'same' padding (TensorFlow's
    rules: 'same' pads the end more; average pooling counts only real pixels)."""

    kind: str  # "average" or "max"
    pool: tuple[int, int]
    strides: tuple[int, int]
    padding: str = "valid"

    @property
    def linear(self) -> bool:
        return self.kind == "average"

    def _geometry(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        out, pad = [], []
        for size, k, s in zip((h, w), self.pool, self.strides, strict=True):
            if self.padding == "same":
                o = -(-size // s)
                pad.append(max((o - 1) * s + k - size, 0) // 2)
            else:
                o = (size - k) // s + 1
                pad.append(0)
            out.append(o)
        return (out[0], out[1]), (pad[0], pad[1])

    def _windows(self, h: int, w: int):  # type: ignore[no-untyped-def]
        (oh, ow), (ph, pw) = self._geometry(h, w)
        for i in range(oh):
            top = i * self.strides[0] - ph
            rows = slice(max(top, 0), min(top + self.pool[0], h))
            for j in range(ow):
                left = j * self.strides[1] - pw
                yield i, j, rows, slice(max(left, 0), min(left + self.pool[1], w))

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, h, w, k = x.shape
        (oh, ow), _ = self._geometry(h, w)
        out = np.empty((n, oh, ow, k), dtype=x.dtype)
        for i, j, rows, cols in self._windows(h, w):
            window = x[:, rows, cols]
            out[:, i, j] = (
                window.mean(axis=(1, 2)) if self.kind == "average" else window.max(axis=(1, 2))
            )
        return out

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        n, h, w, k = x.shape
        dx = np.zeros(x.shape, dtype=np.result_type(dy, np.float32))
        batch, chan = np.arange(n)[:, None], np.arange(k)[None, :]
        for i, j, rows, cols in self._windows(h, w):
            window = x[:, rows, cols]
            wh, ww = window.shape[1:3]
            if self.kind == "average":
                dx[:, rows, cols] += dy[:, i, j, None, None, :] / (wh * ww)
                continue
            first = window.reshape(n, wh * ww, k).argmax(axis=1)  # the first maximum
            r, c = first // ww + rows.start, first % ww + cols.start
            dx[batch, r, c, chan] += dy[:, i, j]
        return dx


@dataclass(frozen=True)
class Reshape:
    """Flatten (shape ``None``: one axis) or Keras Reshape to a fixed per-image shape."""

    shape: tuple[int, ...] | None = None
    linear = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], *(self.shape if self.shape is not None else (-1,)))

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
    """Dense on the last axis (also a 1x1 convolution), then an activation."""

    kernel: np.ndarray  # (in, out)
    bias: np.ndarray  # (out,)
    activation: Activation

    @property
    def linear(self) -> bool:
        return self.activation.linear

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.activation.forward(matmul(x, self.kernel) + self.bias)

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        if self.activation == _PLAIN_RELU:
            dy = dy * (y > 0)  # the same mask as from the pre-activation, without recomputing it
        elif not self.activation.linear:
            pre = matmul(x, self.kernel) + self.bias
            dy = self.activation.backward(pre, y, dy)
        return matmul(dy, self._kernel_t)

    @property
    def _kernel_t(self) -> np.ndarray:
        return self.kernel.T


_PLAIN_RELU = Activation("relu")


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
class LayerNorm:
    """Layer normalisation over the last axis, with scale gamma and offset beta."""

    gamma: np.ndarray
    beta: np.ndarray
    epsilon: float
    linear = False

    def _normalised(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = x.mean(axis=-1, keepdims=True)
        inv = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + self.epsilon)
        return (x - mean) * inv, inv

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._normalised(x)[0] * self.gamma + self.beta

    def backward(self, x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
        xhat, inv = self._normalised(x)
        g = dy * self.gamma
        return inv * (
            g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)
        )
