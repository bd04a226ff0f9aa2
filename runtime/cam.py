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
from typing import Literal

import numpy as np

TargetSpace = Literal["logit", "probability"]
TARGET_SPACES: tuple[str, ...] = ("logit", "probability")


@dataclass(frozen=True)
class CamInputs:
    """What a method may use, for a batch of N images."""

    features: np.ndarray  # A: (N, h, w, K) float32
    gradient: np.ndarray  # G = d score / dA: (N, h, w, K) float32


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
    weights = x.gradient.mean(axis=(1, 2))  # (N, K)
    return np.maximum(np.einsum("nhwk,nk->nhw", x.features, weights), 0.0)
