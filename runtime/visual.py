"""Turning a CAM into pictures: heatmap at image size, JET colours, overlay, side-by-side panel."""

from __future__ import annotations

import cv2
import numpy as np

from .cam import normalize

DEFAULT_ALPHA = 0.4

# JET as a 256-entry RGB table, built once: applyColorMap with a named map rebuilds its table
# on every call (~10x slower than applying a ready table at 150 x 150).
_JET_RGB = cv2.cvtColor(
    cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
)


def heatmap_at(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """The map normalised to [0, 1] and resized (bilinear) to ``height`` x ``width``."""
    norm = normalize(cam)
    resized = cv2.resize(norm, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """A [0, 1] map as an RGB uint8 picture with the JET colormap."""
    # Saturating, rounding conversion in one OpenCV call: 2 us against 12 us in numpy at 150 px.
    levels = cv2.convertScaleAbs(np.clip(heatmap, 0.0, 1.0), alpha=255.0)
    return cv2.applyColorMap(levels, _JET_RGB)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend the coloured heatmap over ``image`` (uint8, H x W x 1 or 3): alpha * heat + rest."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    rgb = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
    return cv2.addWeighted(colorize(heatmap), alpha, np.ascontiguousarray(rgb), 1.0 - alpha, 0.0)


def panel(image: np.ndarray, heatmap: np.ndarray, blended: np.ndarray, title: str) -> np.ndarray:
    """Original, heatmap and overlay side by side with a title bar: an RGB uint8 picture."""
    rgb = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
    h = max(rgb.shape[0], 160)
    scale = h / rgb.shape[0]
    w = max(1, round(rgb.shape[1] * scale))

    def fit(picture: np.ndarray) -> np.ndarray:
        return cv2.resize(picture, (w, h), interpolation=cv2.INTER_LINEAR)

    gap = np.full((h, 6, 3), 255, np.uint8)
    row = np.concatenate([fit(rgb), gap, fit(colorize(heatmap)), gap, fit(blended)], axis=1)
    bar = np.full((28, row.shape[1], 3), 255, np.uint8)
    font_scale = min(0.55, 0.55 * row.shape[1] / 480)
    cv2.putText(
        bar, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.concatenate([bar, row], axis=0)
