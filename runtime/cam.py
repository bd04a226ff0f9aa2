"""Class activation maps from the two graph outputs and the head gradient.

A method is only its way of turning features A (N, h, w, K) and the gradient G = d target / dA
into a map; the shared pipeline (targets, gradient, ReLU, normalisation, resizing) lives in
:class:`scenecam_edge.SceneCam`. Adding a method is one function and one ``@register`` line,
and the CLI's ``--method`` choices come from :data:`METHODS`.

Targets (``target_space``), with z the logits and p = softmax(z):
- ``"logit"``: the score is z_c, so G = dz_c/dA (the Grad-CAM paper).
- ``"probability"``: the score is p_c, so G = p_c (dz_c/dA - sum_j p_j dz_j/dA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from .head import Head

TargetSpace = Literal["logit", "probability"]
TARGET_SPACES: tuple[str, ...] = ("logit", "probability")


class CamInputs:
    """What a method may use, for a batch of N images. Gradients are computed on first use,
    so a method pays only for what it reads."""

    def __init__(self, features: np.ndarray, head: Head, cotangent: np.ndarray) -> None:
        self.features = features  # A: (N, h, w, K) float32
        self.head = head
        self.cotangent = cotangent  # (N, C): score = sum_c cotangent[n, c] * z_c locally

    @cached_property
    def gradient(self) -> np.ndarray:
        """G = d score / dA, (N, h, w, K)."""
        return self.head.vjp(self.features, self.cotangent)

    @cached_property
    def pooled_gradient(self) -> np.ndarray:
        """G averaged over the spatial positions, (N, K); cheap for linear heads."""
        return self.head.pooled_vjp(self.features, self.cotangent)


@dataclass(frozen=True)
class CamMethod:
    name: str
    summary: str
    compute: Callable[[CamInputs], np.ndarray]  # -> (N, h, w) after ReLU, not normalised


METHODS: dict[str, CamMethod] = {}


def register(name: str, summary: str) -> Callable[[Callable[[CamInputs], np.ndarray]], CamMethod]:
    def add(fn: Callable[[CamInputs], np.ndarray]) -> CamMethod:
        if name in METHODS:
            raise ValueError(f"CAM method {name!r} is registered twice")
        METHODS[name] = CamMethod(name, summary, fn)
        return METHODS[name]

    return add


def get_method(name: str) -> CamMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown CAM method {name!r}; choose from {sorted(METHODS)}") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def score_cotangent(
    probabilities: np.ndarray, targets: np.ndarray, space: TargetSpace
) -> np.ndarray:
    """The weights v (N, C) such that d score / dA = sum_j v_j dz_j/dA."""
    n, c = probabilities.shape
    onehot = np.zeros((n, c), dtype=np.float64)
    onehot[np.arange(n), targets] = 1.0
    if space == "logit":
        return onehot
    if space == "probability":
        p_c = probabilities[np.arange(n), targets][:, None].astype(np.float64)
        return p_c * (onehot - probabilities)
    raise ValueError(f"target_space must be one of {TARGET_SPACES}, not {space!r}")


def normalize(cam: np.ndarray) -> np.ndarray:
    """Scale each map to [0, 1] by its maximum; an all-zero map stays zero."""
    cam = np.asarray(cam, dtype=np.float32)
    top = cam.max(axis=(-2, -1), keepdims=True)
    safe = np.where(top > 0, top, 1.0)
    return np.where(top > 0, cam / safe, 0.0).astype(np.float32)


@register("gradcam", "Grad-CAM: channels weighted by their spatially averaged gradient")
def _gradcam(x: CamInputs) -> np.ndarray:
    return np.maximum(weighted_sum(x.features, x.pooled_gradient), 0.0)


def weighted_sum(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_k weights[n, k] * features[n, :, :, k] for each image: (N, h, w)."""
    n, h, w, k = features.shape
    return np.matmul(features.reshape(n, h * w, k), weights[:, :, None].astype(np.float32)).reshape(
        n, h, w
    )
