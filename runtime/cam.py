"""Class activation maps from the two graph outputs and the head gradient.

A method is only its way of turning the features A (N, h, w, K), and what it needs besides
(the gradient G = d score / dA, the head, extra forward passes), into a map. The shared
pipeline (targets, ReLU, normalisation, resizing, overlay) lives in
:meth:`scenecam_edge.SceneCam.predict`. Adding a method is one function and one
``@register`` line; the CLI's ``--method`` choices come from :data:`METHODS`.

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

from .images import resize_map

if TYPE_CHECKING:
    from .head import Head

TargetSpace = Literal["logit", "probability"]
TARGET_SPACES: tuple[str, ...] = ("logit", "probability")
EPS = 1e-7
DEFAULT_MAX_CHANNELS = 64


class CamInputs:
    """What a method may use, for a batch of N images. Gradients are computed on first use,
    so a method pays only for what it reads."""

    def __init__(
        self,
        features: np.ndarray,
        head: Head,
        logits: np.ndarray,
        targets: np.ndarray,
        target_space: TargetSpace,
        *,
        inputs: np.ndarray | None = None,
        forward: Callable[[np.ndarray], np.ndarray] | None = None,
        max_channels: int = DEFAULT_MAX_CHANNELS,
    ) -> None:
        self.features = features  # A: (N, h, w, K) float32
        self.head = head
        self.logits = logits  # z: (N, C)
        self.targets = targets  # (N,) class indices
        self.target_space = target_space
        self.inputs = inputs  # the graph's uint8 input batch (N, H, W, C), for extra passes
        self.forward = forward  # uint8 batch -> logits, for extra passes
        self.max_channels = max_channels

    @cached_property
    def probabilities(self) -> np.ndarray:
        return softmax(self.logits.astype(np.float64))

    @cached_property
    def cotangent(self) -> np.ndarray:
        """v (N, C) such that d score / dA = sum_c v_c dz_c/dA."""
        return score_cotangent(self.probabilities, self.targets, self.target_space)

    @cached_property
    def gradient(self) -> np.ndarray:
        """G = d score / dA, (N, h, w, K)."""
        return self.head.vjp(self.features, self.cotangent)

    @cached_property
    def pooled_gradient(self) -> np.ndarray:
        """G averaged over the spatial positions, (N, K); cheap for linear heads."""
        return self.head.pooled_vjp(self.features, self.cotangent)

    def scores(self, logits: np.ndarray, target: int) -> np.ndarray:
        """The target's score in this target space for rows of logits (M, C)."""
        if self.target_space == "logit":
            return logits[:, target].astype(np.float64)
        return softmax(logits.astype(np.float64))[:, target]


@dataclass(frozen=True)
class CamMethod:
    name: str
    summary: str
    compute: Callable[[CamInputs], np.ndarray]  # -> (N, h, w) after ReLU, not normalised
    uses_target: bool = True  # False: the map is the same whatever the class
    extra_passes: bool = False  # True: runs the graph again (slower)


METHODS: dict[str, CamMethod] = {}


def register(
    name: str, summary: str, *, uses_target: bool = True, extra_passes: bool = False
) -> Callable[[Callable[[CamInputs], np.ndarray]], CamMethod]:
    def add(fn: Callable[[CamInputs], np.ndarray]) -> CamMethod:
        if name in METHODS:
            raise ValueError(f"CAM method {name!r} is registered twice")
        METHODS[name] = CamMethod(name, summary, fn, uses_target, extra_passes)
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


def weighted_sum(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_k weights[n, k] * features[n, :, :, k] for each image: (N, h, w)."""
    n, h, w, k = features.shape
    flat = features.reshape(n, h * w, k)
    return np.matmul(flat, weights[:, :, None].astype(np.float32)).reshape(n, h, w)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0).astype(np.float32)


# -- the methods ---------------------------------------------------------------------------


@register("gradcam", "Grad-CAM: channels weighted by their spatially averaged gradient")
def _gradcam(x: CamInputs) -> np.ndarray:
    return _relu(weighted_sum(x.features, x.pooled_gradient))


@register("gradcam++", "Grad-CAM++: positive gradients weighted by second-order terms")
def _gradcam_pp(x: CamInputs) -> np.ndarray:
    # Chattopadhyay et al., with the exponential-score identities used by pytorch-grad-cam:
    # a = G^2 / (2 G^2 + sum_ab A_ab G^3), weights = sum_ij a * ReLU(G).
    g = x.gradient.astype(np.float64)
    g2 = g * g
    sum_a = x.features.sum(axis=(1, 2), keepdims=True, dtype=np.float64)
    a = g2 / (2 * g2 + sum_a * g2 * g + EPS)
    a = np.where(g != 0, a, 0.0)
    weights = (a * np.maximum(g, 0)).sum(axis=(1, 2))
    return _relu(weighted_sum(x.features, weights))


@register("xgradcam", "XGrad-CAM: gradients weighted by the normalised activations")
def _xgradcam(x: CamInputs) -> np.ndarray:
    a = x.features.astype(np.float64)
    sum_a = a.sum(axis=(1, 2), keepdims=True)
    weights = (x.gradient * a / (sum_a + EPS)).sum(axis=(1, 2))
    return _relu(weighted_sum(x.features, weights))


@register("hirescam", "HiResCAM: gradient times activation, summed over channels")
def _hirescam(x: CamInputs) -> np.ndarray:
    return _relu((x.gradient * x.features).sum(axis=-1))


@register("layercam", "LayerCAM: positive gradient times activation, summed over channels")
def _layercam(x: CamInputs) -> np.ndarray:
    return _relu((np.maximum(x.gradient, 0) * x.features).sum(axis=-1))


@register(
    "eigencam", "Eigen-CAM: the first principal component of the activations", uses_target=False
)
def _eigencam(x: CamInputs) -> np.ndarray:
    n, h, w, k = x.features.shape
    out = np.empty((n, h, w), np.float32)
    for i in range(n):
        flat = x.features[i].reshape(h * w, k).astype(np.float64)
        out[i] = eigen_projection(flat).reshape(h, w)
    return _relu(out)


def eigen_projection(flat: np.ndarray) -> np.ndarray:
    """Projection of centred (positions, channels) activations on their first principal
    axis. It is computed from the small positions x positions Gram matrix (C C^T = U S^2 U^T,
    so C v_1 = s_1 u_1): one symmetric eigendecomposition of h*w x h*w instead of an SVD of
    the full activations, which measured 2.3 ms against 0.8 ms at 10 x 10 x 192. The sign
    is chosen so that the map correlates positively with the total activation, which keeps
    the salient side after the ReLU."""
    centred = flat - flat.mean(axis=0)
    values, vectors = np.linalg.eigh(centred @ centred.T)
    projection = vectors[:, -1] * np.sqrt(max(float(values[-1]), 0.0))
    total = flat.sum(axis=1)
    if np.dot(projection, total - total.mean()) < 0:
        projection = -projection
    return projection


@register("ablationcam", "Ablation-CAM: each channel weighted by the score drop when it is removed")
def _ablationcam(x: CamInputs) -> np.ndarray:
    # Removing channel k changes only what comes after the features, so the head alone gives
    # the ablated scores: in closed form for a linear head, else the numpy head per channel.
    n, k = x.features.shape[0], x.features.shape[3]
    weights = np.empty((n, k), np.float64)
    for i in range(n):
        a = x.features[i]
        t = int(x.targets[i])
        if x.head.jacobian is not None:
            drop = np.einsum("hwk,chwk->ck", a, x.head.jacobian, dtype=np.float64)  # (C, K)
            ablated = x.logits[i].astype(np.float64)[None, :] - drop.T  # (K, C)
        else:
            batch = np.repeat(a[None], k, axis=0)
            batch[np.arange(k), :, :, np.arange(k)] = 0.0
            ablated = x.head.logits(batch).astype(np.float64)
        original = x.scores(x.logits[i : i + 1], t)[0]
        weights[i] = (original - x.scores(ablated, t)) / (original + EPS)
    return _relu(weighted_sum(x.features, weights))


@register(
    "scorecam",
    "Score-CAM: channels weighted by the score of the image masked with them",
    extra_passes=True,
)
def _scorecam(x: CamInputs) -> np.ndarray:
    if x.inputs is None or x.forward is None:
        raise ValueError("scorecam needs the input images and the graph for extra passes")
    n, h, w, k = x.features.shape
    size = x.inputs.shape[1:3]
    keep = min(k, x.max_channels)
    out = np.empty((n, h, w), np.float32)
    for i in range(n):
        a = x.features[i]
        channels = np.argsort(-a.max(axis=(0, 1)), kind="stable")[:keep]  # most activated first
        masks = resize_map(np.moveaxis(a, -1, 0)[channels], size[0], size[1])
        lo = masks.min(axis=(1, 2), keepdims=True)
        hi = masks.max(axis=(1, 2), keepdims=True)
        masks = np.where(hi > lo, (masks - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        masked = np.round(x.inputs[i][None].astype(np.float32) * masks[..., None]).astype(np.uint8)
        logits = np.concatenate([x.forward(masked[s : s + 32]) for s in range(0, keep, 32)])
        scores = x.scores(logits, int(x.targets[i]))
        weights = np.zeros(k, np.float64)
        weights[channels] = softmax(scores)
        out[i] = weighted_sum(a[None], weights[None])[0]
    return _relu(out)
